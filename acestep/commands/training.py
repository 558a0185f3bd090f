"""Training commands: GPU check, train, the runs so far, a run's bug report, export, merge, preview."""

from __future__ import annotations

import argparse
import atexit
import signal
import sys
from pathlib import Path

from acestep.commands.common import EXIT_STOPPED, checkpoints_dir_arg, interrupt_signals
from acestep.errors import AceStepError


def cmd_gpu(args: argparse.Namespace) -> int:
    """The GPUs and what holds them, the recommended preset, and a config's VRAM estimate."""
    from acestep.gpu.report import gpu_command_report

    print(gpu_command_report(args.config, args.checkpoints_dir, overrides=args.set))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train an adapter from a TOML config (or continue a run)."""
    from acestep.training.config import apply_overrides, config_from_dict, load_config, resolve_paths
    from acestep.training.events import console_listener
    from acestep.training.loop import train

    config_path = args.config
    if config_path is None and args.resume is not None:
        config_path = _run_folder(args.resume) / "config.toml"
    if config_path is None and not args.set:
        raise AceStepError("Give --config RUN.toml, or the tensors to train on with --set data.tensors_dir=DIR "
                           "(the folder `acestep-trainer preprocess` wrote; every other setting then takes its "
                           "default, the preset's or a --set), or --resume RUN_DIR to continue a run.")
    # Relative folders in the config are taken from where the command runs; the run folder's
    # config.toml then holds absolute paths, so the run can be reproduced from anywhere.
    # Without a file the run starts from the defaults, and --preset and --set fill it in.
    config = load_config(config_path) if config_path else config_from_dict({}, complete=False)
    if args.preset:  # the preset's GPU settings over the file, then the --set overrides over both
        from acestep.training.presets import apply_named_preset

        config = apply_named_preset(config, args.preset)
    config = resolve_paths(apply_overrides(config, args.set), Path.cwd())
    requested, previous = [], {}

    def install(request_stop) -> None:
        def on_signal(signum, frame):
            if requested:  # a second one while the stop is saved: abort at once
                raise KeyboardInterrupt
            requested.append(signum)
            print("\nStopping after the current step and saving a checkpoint (Ctrl+C again to abort at once)...",
                  file=sys.stderr, flush=True)
            request_stop()

        for signum in (*interrupt_signals(), signal.SIGTERM):
            previous.setdefault(signum, signal.signal(signum, on_signal))  # the first handler, were it called twice

    try:
        result = train(config, resume=args.resume, force=args.force, listeners=[console_listener],
                       stop_signal=install)
    finally:  # the run is over, saved or not: a signal now means what it meant before
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        atexit.unregister(_exit_at_once_on_ctrl_c)  # once per process; it runs before the callbacks
        atexit.register(_exit_at_once_on_ctrl_c)  # registered so far (torch's clean-up among them)
    print(f"{result.status}: step {result.step}, epoch {result.epoch}; run folder {result.run_dir}")
    # a stopped run is not finished: a script's `train && export` must not go on with it
    return EXIT_STOPPED if result.status == "stopped" else 0


def _exit_at_once_on_ctrl_c() -> None:
    """While the interpreter exits after a run (torch and the data workers clean up for a moment),
    a Ctrl+C ends the process at once, as the signal's default does (a shell says status 130),
    instead of a KeyboardInterrupt traceback from the clean-up it lands in. A handler other than
    Python's default (SIG_IGN in a background job) is left alone."""
    for signum in interrupt_signals():
        if signal.getsignal(signum) is signal.default_int_handler:
            signal.signal(signum, signal.SIG_DFL)


def _run_folder(path: Path) -> Path:
    """A run folder from `--resume`, which may also name one of its checkpoints."""
    path = path.resolve()
    return path.parent.parent if path.parent.name == "checkpoints" else path


def cmd_export(args: argparse.Namespace) -> int:
    """Write a trained adapter in the formats other tools load, each verified by reloading."""
    from acestep.export.formats import export_adapter

    result = export_adapter(args.source, args.out, formats=tuple(args.format or ()) or None, name=args.name,
                            overwrite=args.overwrite,
                            verify=not args.no_verify, checkpoint=args.checkpoint,
                            checkpoints_dir=args.checkpoints_dir)
    for kind, path in result.files.items():
        check = (f"  (reloaded: max difference {result.max_difference[kind]:.1e})"
                 if kind in result.max_difference else "")
        print(f"{kind:10s} {path}{check}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    """Merge an adapter into its base model and write a complete checkpoint folder."""
    import math

    from acestep.export import AdapterError
    from acestep.export.merge import merge_adapter

    # said with the options' names before anything loads (the library refuses them too)
    if not math.isfinite(args.strength):
        raise AdapterError(f"--strength must be a finite number (1 = as trained, e.g. 0.8); got {args.strength}.")
    if args.max_shard_gb is not None and not (math.isfinite(args.max_shard_gb) and args.max_shard_gb > 0):
        raise AdapterError(f"--max-shard-gb must be a size in GB above 0 (e.g. 4), or left out for one file; "
                           f"got {args.max_shard_gb:g}.")
    shard = math.ceil(args.max_shard_gb * 2**30) if args.max_shard_gb is not None else None
    out = merge_adapter(args.checkpoint, args.adapter, args.out, strength=args.strength, dtype=args.dtype,
                        max_shard_bytes=shard, shared=args.shared, overwrite=args.overwrite,
                        checkpoints_dir=args.checkpoints_dir)
    print(f"Merged checkpoint written to {out}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    """The training runs in a runs folder, newest first, as the web app's Runs tab lists them."""
    import json

    from acestep.files import size_text
    from acestep.training.run_cleanup import delete_checkpoints, delete_run
    from acestep.training.run_folders import RUN_HEADERS, run_adapters, run_folder, run_row, summarize_runs

    if args.delete_checkpoints:
        freed = delete_checkpoints(run_folder(args.runs_dir, args.delete_checkpoints), force=args.force)
        print(f"Deleted the checkpoints of run {args.delete_checkpoints} ({size_text(freed)} freed); its adapters "
              "stay, and it can no longer be resumed.")
        return 0
    if args.delete:
        freed = delete_run(run_folder(args.runs_dir, args.delete))
        print(f"Deleted run {args.delete} ({size_text(freed)} freed).")
        return 0
    summaries = summarize_runs(args.runs_dir, [])  # status from the events (no job manager here)
    if not summaries:
        raise AceStepError(f"No training runs in {args.runs_dir} (folders with a config.toml). Give the runs "
                           "folder: `runs` under the folder `train` ran in, or workspace/runs for the web app.")
    if args.json:
        print(json.dumps([{**{key: str(value) if key == "path" else value for key, value in vars(s).items()},
                           "adapters": [name for name, _ in run_adapters(s.path)]} for s in summaries], indent=2))
        return 0
    rows = [RUN_HEADERS + ["Adapters"]]
    rows += [run_row(s) + [", ".join(name for name, _ in run_adapters(s.path)) or "none yet"] for s in summaries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    return 0


def cmd_bug_report(args: argparse.Namespace) -> int:
    """Write a run's bug-report bundle: environment, config, events, log tail, folder listing."""
    from acestep.environment.bug_report import report_run_folder, write_bug_report
    from acestep.files import size_text

    run_dir = report_run_folder(args.run_dir)  # a wrong folder is said before the slow environment check
    print("Checking the environment (10-30 s: it imports every package)...", flush=True)
    report = write_bug_report(run_dir, args.output)
    print(f"Bug report written to {report.path} ({size_text(report.size)}); attach it to the issue.")
    return 0


def add_commands(commands) -> None:
    gpu = commands.add_parser("gpu", help="show the GPUs, the recommended preset, and a config's VRAM estimate "
                              "and run plan")
    gpu.add_argument("--config", type=Path, default=None, metavar="RUN.toml",
                     help="also estimate this training config's peak VRAM against each GPU's free memory, "
                          "and count its songs, batches and steps")
    gpu.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                     help="override one config value for the estimate (repeatable); without --config the estimate "
                          "is for the defaults with these values, as `train` takes them")
    checkpoints_dir_arg(gpu)
    gpu.set_defaults(func=cmd_gpu)

    train = commands.add_parser("train", help="train an adapter from a TOML config, or continue a run")
    train.add_argument("--config", type=Path, default=None, metavar="RUN.toml",
                       help="training config (see examples/train_lora.toml); without one the run starts from the "
                            "defaults, and --preset and --set data.tensors_dir=DIR fill it in")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                       help="override one config value, e.g. --set optimizer.lr=2e-4 (repeatable)")
    train.add_argument("--preset", default=None, metavar="NAME",
                       help="apply a GPU preset over the config before the --set overrides (vram_24gb_plus, "
                            "vram_16gb, vram_12gb, vram_8gb, recommended, high_quality, quick_test, or a saved one; "
                            "`acestep-trainer gpu` recommends one)")
    train.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                       help="continue a run from its newest complete checkpoint (or from one checkpoint folder) "
                            "with its own settings; --set may change some for the rest of the run")
    train.add_argument("--force", action="store_true",
                       help="resume even if the dataset, the number of processes or the data order changed")
    train.set_defaults(func=cmd_train)

    runs = commands.add_parser("runs", help="list the training runs in a runs folder: status, steps, losses, "
                                            "adapters; delete a run or its checkpoints")
    runs.add_argument("runs_dir", type=Path, nargs="?", default=Path("runs"), metavar="RUNS_DIR",
                      help="the folder holding the run folders (default: runs, as run.output_dir)")
    runs.add_argument("--json", action="store_true", help="print every run's figures as JSON")
    deletion = runs.add_mutually_exclusive_group()  # one deletion per command: each says what it freed
    deletion.add_argument("--delete-checkpoints", default=None, metavar="RUN",
                          help="delete the step checkpoints of a finished run (best/ and final/ stay; it can no "
                               "longer be resumed)")
    deletion.add_argument("--delete", default=None, metavar="RUN", help="delete a whole run folder")
    runs.add_argument("--force", action="store_true",
                      help="with --delete-checkpoints: also for a run that has not finished")
    runs.set_defaults(func=cmd_runs)

    # not "report": that is the dataset report (acestep.commands.data)
    report = commands.add_parser("bug-report", help="write a run's bug report: one .zip with the environment, its "
                                                    "config, events and log tail, and its folder listing (no weights, "
                                                    "no audio)")
    report.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run folder (it holds a config.toml)")
    report.add_argument("--output", type=Path, default=None, metavar="FILE",
                        help="the .zip to write, or a folder for it (default: RUN_DIR/../<run>-report.zip); an "
                             "existing file is never replaced: -2, -3, ... is added to the name")
    report.set_defaults(func=cmd_bug_report)

    export = commands.add_parser("export", help="write a trained adapter for ACE-Step, ComfyUI or diffusers")
    export.add_argument("source", type=Path, metavar="ADAPTER",
                        help="a run folder (its final/ adapter), a checkpoint folder, or an adapter folder")
    export.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="output folder (empty, or pass --overwrite)")
    export.add_argument("--format", action="append", choices=("peft", "comfyui", "diffusers", "lycoris"),
                        default=None,
                        help="repeatable; default: peft and comfyui for a LoRA, peft for a DoRA (ComfyUI reads "
                             "its PEFT folder; it can also be written as diffusers), lycoris for a LoKr")
    export.add_argument("--name", default=None, help="file name stem (default: trigger tag and step)")
    export.add_argument("--checkpoint", default=None, help="base DiT (default: the one the adapter was trained on)")
    export.add_argument("--overwrite", action="store_true",
                        help="replace the contents of a non-empty --out (once the new export is whole and checked)")
    export.add_argument("--no-verify", action="store_true", help="skip reloading each export to compare outputs")
    checkpoints_dir_arg(export)
    export.set_defaults(func=cmd_export)

    merge = commands.add_parser("merge", help="merge an adapter into its base model (a complete checkpoint)")
    merge.add_argument("adapter", type=Path, metavar="ADAPTER", help="adapter folder or file (any format), or a run")
    merge.add_argument("--checkpoint", default=None, metavar="DIT",
                       help="base DiT (default: the one the adapter was trained on)")
    merge.add_argument("--out", type=Path, required=True, metavar="DIR", help="the new checkpoint folder")
    merge.add_argument("--strength", type=float, default=1.0, help="adapter strength to merge (default 1.0)")
    merge.add_argument("--dtype", choices=("bf16", "fp16", "fp32", "keep"), default="bf16",
                       help="dtype of the merged weights (default bf16, like the official files)")
    merge.add_argument("--max-shard-gb", type=float, default=None, metavar="GB",
                       help="split the weights into shards of at most this size (above 0; default: one file)")
    merge.add_argument("--shared", choices=("copy", "link", "skip"), default="copy",
                       help="vae/ and the text encoder beside the new folder: copy (default), link or skip")
    merge.add_argument("--overwrite", action="store_true",
                       help="replace a non-empty --out (once the new merge is whole)")
    checkpoints_dir_arg(merge)
    merge.set_defaults(func=cmd_merge)

    from acestep.inference.cli import add_preview_arguments, run_preview

    preview = commands.add_parser("preview", help="render audio with a checkpoint, and an adapter at strengths")
    add_preview_arguments(preview)
    preview.set_defaults(func=run_preview)
