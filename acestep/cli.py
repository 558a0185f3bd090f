"""`acestep-trainer <command>`: the same functions the web UI's jobs call, for scripts.

Exit status: 0 success; 1 a user error, with a one-line message (a wrong path, a checkpoint of
another model, a missing download; tracebacks only with `--debug`); 2 a batch that finished with
some files failed (each listed on stderr); 130 stopped on request (finished work is kept).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from pathlib import Path

from acestep import __version__
from acestep.errors import AceStepError


def _checkpoints_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoints-dir", type=Path, default=None,
        help="folder holding the model folders "
             "(default: $ACESTEP_CHECKPOINTS_DIR, else checkpoints/ in the project folder)",
    )


def cmd_models(args: argparse.Namespace) -> int:
    """List the model folders found in the checkpoints directory."""
    from acestep.models.checkpoints import default_checkpoints_dir, list_checkpoints

    root = args.checkpoints_dir or default_checkpoints_dir()
    found = list_checkpoints(root)
    print(f"Checkpoints directory: {root}")
    if not found:
        print("  (no model folders; get them with "
              "`acestep-trainer download acestep-v15-turbo vae Qwen3-Embedding-0.6B`)")
    for info in found:
        state = "ok" if info.complete else (info.problem or "incomplete: missing " + ", ".join(info.missing))
        variant = f" [{info.variant}]" if info.variant else ""
        print(f"  {info.name:32s} {info.kind:12s}{variant:12s} {state}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """Download official models (resumable) into the checkpoints directory."""
    from acestep.models.checkpoints import OFFICIAL_MODELS, download_model

    if args.list:
        for model in OFFICIAL_MODELS:
            print(f"  {model.name:32s} {model.hf_id:48s} {model.description}")
        return 0
    if not args.names:
        raise AceStepError("Name at least one model (see `acestep-trainer download --list`).")
    for name in args.names:
        print(f"Downloading {name} ...", flush=True)
        print(f"  -> {download_model(name, args.checkpoints_dir)}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Load a DiT checkpoint strictly and print what it is."""
    from acestep.models.load import load_acestep

    bundle = load_acestep(args.checkpoint, dtype=_dtype(args.dtype), checkpoints_dir=args.checkpoints_dir)
    params = {name: sum(p.numel() for p in getattr(bundle, name).parameters())
              for name in ("transformer", "condition_encoder", "audio_tokenizer", "audio_detokenizer")}
    print(f"Checkpoint:   {bundle.path}")
    print(f"Variant:      {bundle.variant}  (model_version {bundle.config.model_version!r}, "
          f"is_turbo {bundle.config.is_turbo})")
    print(f"Fingerprint:  {bundle.config.fingerprint}")
    print(f"Timesteps:    logit-normal(mu={bundle.config.timestep_mu}, sigma={bundle.config.timestep_sigma}), "
          "max of two draws")
    for name, count in params.items():
        print(f"  {name:18s} {count:,} parameters")
    print(f"  null_condition_emb {tuple(bundle.null_condition_emb.shape)}   "
          f"silence_latent {tuple(bundle.silence_latent.shape)}")
    return 0


def cmd_tiny_checkpoint(args: argparse.Namespace) -> int:
    """Write a tiny random checkpoints directory in the official layout."""
    from acestep.models.tiny import write_tiny_checkpoints

    out = write_tiny_checkpoints(args.out_dir, seed=args.seed, overwrite=args.overwrite)
    print(f"Wrote tiny checkpoints to {out}: acestep-v15-turbo/, vae/, Qwen3-Embedding-0.6B/")
    return 0


EXIT_PARTIAL = 2  # the batch finished but some files failed (listed on stderr)
EXIT_STOPPED = 130  # stopped on request (Ctrl+C); finished work is kept


def _print_failures(failures) -> None:
    for failure in failures:
        print(f"  failed: {failure.path}: {failure.reason}", file=sys.stderr)


def cmd_split(args: argparse.Namespace) -> int:
    """Cut long audio files into 30 s or 60 s WAV segments (originals untouched)."""
    from acestep.audio.io import split_folder

    def show(index: int, total: int, path: Path) -> None:
        print(f"[{index}/{total}] {path}", flush=True)

    result = split_folder(args.in_dir, args.out_dir, segment_seconds=args.segment,
                          min_tail_seconds=args.min_tail, progress=show)
    print(f"Wrote {len(result.written)} segment(s) to {args.out_dir}; {len(result.failed)} file(s) failed.")
    _print_failures(result.failed)
    return EXIT_PARTIAL if result.failed else 0


def cmd_build(args: argparse.Namespace) -> int:
    """Scan an audio folder (with its sidecars and CSVs) into a dataset JSON."""
    from acestep.dataset import build_dataset, save_dataset

    if args.out.exists() and not args.overwrite:
        raise AceStepError(f"{args.out} exists; pass --overwrite to replace it (its edits would be lost) "
                           "or choose another --out.")
    result = build_dataset(args.audio_dir, name=args.name, trigger_tag=args.tag, tag_position=args.tag_position,
                           genre_ratio=args.genre_ratio, all_instrumental=args.instrumental,
                           language=args.language, seed=args.seed)
    save_dataset(result.dataset, args.out)
    print(f"Wrote {args.out}: {len(result.dataset.samples)} sample(s), {len(result.failed)} file(s) failed.")
    for warning in result.warnings:
        print(f"  warning: {warning}")
    _print_failures(result.failed)
    return EXIT_PARTIAL if result.failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    """Check a dataset: durations, formats, clipping, silence, duplicates, missing labels."""
    import json

    from acestep.dataset import build_dataset, dataset_report, format_report, load_dataset

    if args.dataset.is_dir():
        dataset = build_dataset(args.dataset).dataset
    else:
        dataset = load_dataset(args.dataset)
    report = dataset_report(dataset, analyse_audio=not args.no_audio)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0


@contextlib.contextmanager
def stop_on_ctrl_c(what: str):
    """While active, the first Ctrl+C asks for a stop after `what` (finished work is kept) and a
    second one aborts at once. Yields the function batch jobs poll for the request."""
    requested = []

    def on_signal(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(True)
        print(f"\nStopping after {what} (Ctrl+C again to abort at once)...", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, on_signal)
    try:
        yield lambda: bool(requested)
    finally:
        signal.signal(signal.SIGINT, previous)


def _format_clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


def cmd_preprocess(args: argparse.Namespace) -> int:
    """Encode a dataset into training tensors (VAE latents, text and lyric encodings, conditions)."""
    from acestep.preprocess import PreprocessSettings, preprocess_dataset

    def show(event) -> None:
        if event.status in ("encoding", "pass 2") and not args.verbose:
            return
        width = len(str(event.total))
        detail = f"  {event.message}" if event.message else ""
        print(f"[{event.index:>{width}}/{event.total}] {event.status:8s} {event.source}{detail}   "
              f"elapsed {_format_clock(event.elapsed)}  ETA {_format_clock(event.eta)}", flush=True)

    settings = PreprocessSettings(max_duration=args.max_duration, normalization=args.normalization,
                                  low_vram=args.low_vram, seed=args.seed, device=args.device, dtype=args.dtype)
    with stop_on_ctrl_c("the current sample") as should_stop:
        summary = preprocess_dataset(args.dataset, args.out, args.checkpoint, vae=args.vae,
                                     text_encoder=args.text_encoder, checkpoints_dir=args.checkpoints_dir,
                                     settings=settings, progress=show, should_stop=should_stop)
    print(summary.describe())
    if summary.cancelled:
        return EXIT_STOPPED
    return EXIT_PARTIAL if summary.failed else 0


def build_labellers(args: argparse.Namespace) -> list:
    """The labellers `caption` runs, in order: the chosen one, the transcriber, signal analysis."""
    from acestep.captioning.analysis_labeller import AnalysisLabeller

    labellers = []
    if args.labeller == "captioner":
        from acestep.captioning.omni import OmniLabeller

        labellers.append(OmniLabeller("captioner", args.captioner, device=args.device, dtype=args.dtype,
                                      cpu_offload=args.cpu_offload, max_seconds=args.max_seconds,
                                      checkpoints_dir=args.checkpoints_dir))
    elif args.labeller == "lm":
        from acestep.captioning.lm_labeller import LmLabeller

        labellers.append(LmLabeller(args.lm, dit=args.dit, device=args.device, dtype=args.dtype,
                                    max_seconds=args.max_seconds, checkpoints_dir=args.checkpoints_dir))
    if args.transcribe:
        from acestep.captioning.omni import OmniLabeller

        labellers.append(OmniLabeller("transcriber", args.transcriber, device=args.device, dtype=args.dtype,
                                      cpu_offload=args.cpu_offload, max_seconds=args.max_seconds,
                                      checkpoints_dir=args.checkpoints_dir))
    if args.labeller == "analysis" or not args.no_analysis:
        labellers.append(AnalysisLabeller(max_seconds=args.max_seconds))
    return labellers


def cmd_caption(args: argparse.Namespace) -> int:
    """Label a folder of songs into `.json` sidecars (and optionally a CSV)."""
    from acestep.captioning.batch import label_folder

    def show(event) -> None:
        detail = f"  {event.message}" if event.message else ""
        print(f"[{event.index}/{event.total}] {event.labeller:11s} {event.status:9s} {event.path}{detail}   "
              f"ETA {_format_clock(event.eta)}", flush=True)

    with stop_on_ctrl_c("the current file") as should_stop:
        summary = label_folder(args.folder, build_labellers(args), mode=args.mode.replace("-", "_"),
                               csv_path=args.csv, cache_dir=args.cache_dir, use_cache=not args.no_cache,
                               progress=show, should_stop=should_stop)
    print(summary.describe())
    if summary.cancelled:
        return EXIT_STOPPED
    return EXIT_PARTIAL if summary.failed else 0


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
    from acestep.export.merge import merge_adapter

    shard = int(args.max_shard_gb * 2**30) if args.max_shard_gb else None
    out = merge_adapter(args.checkpoint, args.adapter, args.out, strength=args.strength, dtype=args.dtype,
                        max_shard_bytes=shard, shared=args.shared, overwrite=args.overwrite,
                        checkpoints_dir=args.checkpoints_dir)
    print(f"Merged checkpoint written to {out}")
    return 0


def cmd_gpu(args: argparse.Namespace) -> int:
    """The GPUs and what holds them, the recommended preset, and a config's VRAM estimate."""
    from acestep.gpu.report import gpu_command_report

    print(gpu_command_report(args.config, args.checkpoints_dir, overrides=args.set))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train an adapter from a TOML config (or continue a run)."""
    from acestep.training.config import apply_overrides, load_config, resolve_paths
    from acestep.training.events import console_listener
    from acestep.training.loop import train

    config_path = args.config
    if config_path is None:
        if args.resume is None:
            raise AceStepError("Give --config RUN.toml (or --resume RUN_DIR to continue a run with its own config).")
        config_path = _run_folder(args.resume) / "config.toml"
    # Relative folders in the config are taken from where the command runs; the run folder's
    # config.toml then holds absolute paths, so the run can be reproduced from anywhere.
    config = resolve_paths(apply_overrides(load_config(config_path), args.set), Path.cwd())
    handlers = []

    def install(request_stop) -> None:
        def on_signal(signum, frame):
            if handlers:
                raise KeyboardInterrupt
            handlers.append(signum)
            print("\nStopping after the current step and saving a checkpoint (Ctrl+C again to abort at once)...",
                  file=sys.stderr, flush=True)
            request_stop()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)

    result = train(config, resume=args.resume, force=args.force, listeners=[console_listener], stop_signal=install)
    print(f"{result.status}: step {result.step}, epoch {result.epoch}; run folder {result.run_dir}")
    return 0


def _run_folder(path: Path) -> Path:
    """A run folder from `--resume`, which may also name one of its checkpoints."""
    path = path.resolve()
    return path.parent.parent if path.parent.name == "checkpoints" else path


def _dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="acestep-trainer",
        description="ACE-Step 1.5 LoRA trainer: the commands behind the web UI, for scripts.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    models = commands.add_parser("models", help="list the model folders in the checkpoints directory")
    _checkpoints_dir_arg(models)
    models.set_defaults(func=cmd_models)

    download = commands.add_parser("download", help="download official models from the Hugging Face Hub")
    download.add_argument("names", nargs="*", metavar="NAME",
                          help="folder names (acestep-v15-turbo, vae, Qwen3-Embedding-0.6B, ...) or HF ids")
    download.add_argument("--list", action="store_true", help="list the official models and exit")
    _checkpoints_dir_arg(download)
    download.set_defaults(func=cmd_download)

    inspect = commands.add_parser("inspect", help="load a DiT checkpoint strictly and describe it")
    inspect.add_argument("checkpoint", help="checkpoint folder, folder name in the checkpoints directory, or HF id")
    inspect.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16",
                         help="dtype to load the weights in (default bf16)")
    _checkpoints_dir_arg(inspect)
    inspect.set_defaults(func=cmd_inspect)

    split = commands.add_parser("split", help="cut long audio files into 30 s or 60 s WAV segments")
    split.add_argument("in_dir", type=Path, metavar="IN_DIR", help="folder of audio files (searched recursively)")
    split.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="where the segments go (sub-folders kept)")
    split.add_argument("--segment", type=int, choices=(30, 60), default=30, help="segment length in seconds")
    split.add_argument("--min-tail", type=float, default=10.0,
                       help="drop a last segment shorter than this many seconds (default 10)")
    split.set_defaults(func=cmd_split)

    build = commands.add_parser("build", help="scan an audio folder and its sidecars into a dataset JSON")
    build.add_argument("audio_dir", type=Path, metavar="AUDIO_DIR")
    build.add_argument("--out", type=Path, required=True, metavar="DATASET.json")
    build.add_argument("--name", default=None, help="dataset name (default: the folder's name)")
    build.add_argument("--tag", default="", help="trigger tag added to every caption (e.g. 'mystyle')")
    build.add_argument("--tag-position", choices=("prepend", "append", "replace"), default="prepend",
                       help="where the tag goes; 'replace' drops the captions (default prepend)")
    build.add_argument("--genre-ratio", type=float, default=0.0,
                       help="share of samples prompted with their genre instead of the caption (0-1, default 0)")
    build.add_argument("--instrumental", action="store_true", help="mark every sample instrumental")
    build.add_argument("--language", default=None, help="language code for samples that do not name one")
    build.add_argument("--seed", type=int, default=42, help="seed of the genre-ratio choice (default 42)")
    build.add_argument("--overwrite", action="store_true", help="replace an existing dataset JSON")
    build.set_defaults(func=cmd_build)

    report = commands.add_parser("report", help="check a dataset (or an audio folder) and print a report")
    report.add_argument("dataset", type=Path, metavar="DATASET", help="dataset JSON or audio folder")
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    report.add_argument("--no-audio", action="store_true", help="skip decoding (no clipping/silence checks)")
    report.set_defaults(func=cmd_report)

    pre = commands.add_parser("preprocess", help="encode a dataset into training tensors")
    pre.add_argument("--dataset", type=Path, required=True, metavar="DATASET.json")
    pre.add_argument("--checkpoint", required=True, metavar="DIT",
                     help="DiT folder, folder name in the checkpoints directory, or HF id")
    pre.add_argument("--out", type=Path, required=True, metavar="TENSORS_DIR")
    pre.add_argument("--vae", default=None, help="VAE folder (default: vae/ beside the DiT)")
    pre.add_argument("--text-encoder", default=None,
                     help="text encoder folder (default: Qwen3-Embedding-0.6B/ beside the DiT)")
    pre.add_argument("--max-duration", type=float, default=240.0,
                     help="seconds of each song to encode, from its start (default 240, at most 600)")
    pre.add_argument("--normalization", choices=("none", "peak", "lufs", "peak_lufs"), default="none",
                     help="loudness normalisation before encoding (peak: -1 dBFS; lufs: -14 LUFS)")
    pre.add_argument("--low-vram", action="store_true",
                     help="two passes: VAE + text encoder, free them, then the condition encoder")
    pre.add_argument("--seed", type=int, default=0, help="seed of the VAE posterior sampling (default 0)")
    pre.add_argument("--device", default=None, help="cuda, cuda:1, mps or cpu (default: the best available)")
    pre.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None,
                     help="model dtype (default: bf16 on CUDA, fp32 elsewhere)")
    pre.add_argument("--verbose", action="store_true", help="also print when each sample starts")
    _checkpoints_dir_arg(pre)
    pre.set_defaults(func=cmd_preprocess)

    caption = commands.add_parser("caption", help="label a folder of songs (captions, lyrics, BPM, key) into sidecars")
    caption.add_argument("folder", type=Path, metavar="DIR", help="folder of audio files (searched recursively)")
    caption.add_argument("--labeller", choices=("captioner", "lm", "analysis"), default="captioner",
                         help="captioner: the ACE-Step AI captioner (default); lm: the 5 Hz LM from the DiT's "
                              "audio codes; analysis: BPM and key only, no model")
    caption.add_argument("--transcribe", action="store_true", help="also transcribe lyrics with section tags")
    caption.add_argument("--no-analysis", action="store_true",
                         help="skip the signal analysis that fills and cross-checks BPM and key")
    caption.add_argument("--mode", choices=("fill-missing", "overwrite"), default="fill-missing",
                         help="fill-missing: skip files whose sidecars already have the labels (default); "
                              "overwrite: replace them")
    caption.add_argument("--csv", type=Path, default=None, help="also write all labels to this CSV")
    caption.add_argument("--no-cache", action="store_true", help="do not read or write the results cache")
    caption.add_argument("--cache-dir", type=Path, default=None, help="results cache (default: cache/labels here)")
    caption.add_argument("--captioner", default="ACE-Step/acestep-captioner", help="captioner folder or HF id")
    caption.add_argument("--transcriber", default="ACE-Step/acestep-transcriber", help="transcriber folder or HF id")
    caption.add_argument("--lm", default="acestep-5Hz-lm-1.7B", help="5 Hz LM folder, name or HF id")
    caption.add_argument("--dit", default="acestep-v15-turbo", help="DiT whose audio tokenizer feeds the LM")
    caption.add_argument("--device", default=None, help="cuda, cuda:1, mps or cpu (default: the best available)")
    caption.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                         help="model dtype (auto: bf16 where supported)")
    caption.add_argument("--cpu-offload", action="store_true", help="keep part of the model in CPU memory (slower)")
    caption.add_argument("--max-seconds", type=float, default=240.0,
                         help="seconds of each song the models listen to (default 240; halved after out-of-memory)")
    _checkpoints_dir_arg(caption)
    caption.set_defaults(func=cmd_caption)

    gpu = commands.add_parser("gpu", help="show the GPUs, the recommended preset and a config's VRAM estimate")
    gpu.add_argument("--config", type=Path, default=None, metavar="RUN.toml",
                     help="also estimate this training config's peak VRAM against each GPU's free memory")
    gpu.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                     help="override one config value for the estimate (repeatable)")
    _checkpoints_dir_arg(gpu)
    gpu.set_defaults(func=cmd_gpu)

    train = commands.add_parser("train", help="train an adapter from a TOML config, or continue a run")
    train.add_argument("--config", type=Path, default=None, metavar="RUN.toml",
                       help="training config (see examples/train_lora.toml); optional with --resume")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                       help="override one config value, e.g. --set optimizer.lr=2e-4 (repeatable)")
    train.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                       help="continue a run from its newest complete checkpoint (or from one checkpoint folder)")
    train.add_argument("--force", action="store_true",
                       help="resume even if the dataset or the number of processes changed")
    train.set_defaults(func=cmd_train)

    export = commands.add_parser("export", help="write a trained adapter for ACE-Step, ComfyUI or diffusers")
    export.add_argument("source", type=Path, metavar="ADAPTER",
                        help="a run folder (its final/ adapter), a checkpoint folder, or an adapter folder")
    export.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (must be empty)")
    export.add_argument("--format", action="append", choices=("peft", "comfyui", "diffusers", "lycoris"),
                        default=None, help="repeatable; default: peft and comfyui (LoKr: lycoris)")
    export.add_argument("--name", default=None, help="file name stem (default: trigger tag and step)")
    export.add_argument("--checkpoint", default=None, help="base DiT (default: the one the adapter was trained on)")
    export.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty --out")
    export.add_argument("--no-verify", action="store_true", help="skip reloading each export to compare outputs")
    _checkpoints_dir_arg(export)
    export.set_defaults(func=cmd_export)

    merge = commands.add_parser("merge", help="merge an adapter into its base model (a complete checkpoint)")
    merge.add_argument("adapter", type=Path, metavar="ADAPTER", help="adapter folder or file (any format), or a run")
    merge.add_argument("--checkpoint", required=True, metavar="DIT", help="base DiT the adapter was trained on")
    merge.add_argument("--out", type=Path, required=True, metavar="DIR", help="the new checkpoint folder")
    merge.add_argument("--strength", type=float, default=1.0, help="adapter strength to merge (default 1.0)")
    merge.add_argument("--dtype", choices=("bf16", "fp16", "fp32", "keep"), default="bf16",
                       help="dtype of the merged weights (default bf16, like the official files)")
    merge.add_argument("--max-shard-gb", type=float, default=None, help="split the weights into shards of this size")
    merge.add_argument("--shared", choices=("copy", "link", "skip"), default="copy",
                       help="vae/ and the text encoder beside the new folder: copy (default), link or skip")
    merge.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    _checkpoints_dir_arg(merge)
    merge.set_defaults(func=cmd_merge)

    from acestep.inference.cli import add_preview_arguments, run_preview

    preview = commands.add_parser("preview", help="render audio with a checkpoint, and an adapter at strengths")
    add_preview_arguments(preview)
    preview.set_defaults(func=run_preview)

    tiny = commands.add_parser("tiny-checkpoint",
                               help="write a tiny random checkpoints directory (tests and the offline demo)")
    tiny.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    tiny.add_argument("--seed", type=int, default=0, help="random seed of the weights (default 0)")
    tiny.add_argument("--overwrite", action="store_true", help="replace model folders already in OUT_DIR")
    tiny.set_defaults(func=cmd_tiny_checkpoint)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except AceStepError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
