"""Data commands: split audio, build, check and tag a dataset, label songs, preprocess into tensors."""

from __future__ import annotations

import argparse
from pathlib import Path

from acestep.commands.common import (
    EXIT_PARTIAL,
    EXIT_STOPPED,
    checkpoints_dir_arg,
    format_clock,
    print_failures,
    stop_on_ctrl_c,
)
from acestep.dataset.schema import DEFAULT_SEED
from acestep.errors import AceStepError


def cmd_split(args: argparse.Namespace) -> int:
    """Cut long audio files into 30 s or 60 s WAV segments (originals untouched); each segment gets
    its source's song-level labels (not the lyrics) in a `.json` sidecar."""
    from acestep.audio.split import split_folder

    def show(index: int, total: int, path: Path) -> None:
        print(f"[{index}/{total}] {path}", flush=True)

    with stop_on_ctrl_c("the current file") as should_stop:
        result = split_folder(args.in_dir, args.out_dir, segment_seconds=args.segment,
                              min_tail_seconds=args.min_tail, progress=show, should_stop=should_stop)
    print(result.describe())
    if result.cancelled:
        return EXIT_STOPPED
    return EXIT_PARTIAL if result.failed else 0


def cmd_build(args: argparse.Namespace) -> int:
    """Scan an audio folder (with its sidecars and CSVs) into a dataset JSON, or with --update add
    its new songs to an existing one."""
    from acestep.dataset import build_dataset, save_dataset

    if args.update is not None:
        return _update_dataset_file(args)
    if args.drop_missing:
        raise AceStepError("--drop-missing only applies with --update EXISTING.json (samples whose audio is gone).")
    if args.out is None:
        raise AceStepError("pass --out DATASET.json (the file to write), or --update EXISTING.json to add the "
                           "folder's new songs to a dataset you already have.")
    if args.out.exists() and not args.overwrite:
        raise AceStepError(f"{args.out} exists; pass --overwrite to replace it (its edits would be lost), "
                           f"--update {args.out} to add the folder's new songs to it, or choose another --out.")
    result = build_dataset(args.audio_dir, name=args.name, trigger_tag=args.tag or "",
                           tag_position=args.tag_position or "prepend", genre_ratio=args.genre_ratio or 0.0,
                           all_instrumental=args.instrumental, language=args.language,
                           seed=DEFAULT_SEED if args.seed is None else args.seed)
    save_dataset(result.dataset, args.out)
    print(f"Wrote {args.out}: {len(result.dataset.samples)} sample(s), {len(result.failed)} file(s) failed.")
    for warning in result.warnings:
        print(f"  warning: {warning}")
    print_failures(result.failed)
    return EXIT_PARTIAL if result.failed else 0


def _update_dataset_file(args: argparse.Namespace) -> int:
    """`build AUDIO_DIR --update EXISTING.json`: every sample of EXISTING kept as it is, the
    folder's new songs added, saved back (refused if the file changed meanwhile) or to --out."""
    from acestep.dataset import load_dataset_revision, save_dataset, update_dataset

    given = [option for option, value in (("--name", args.name), ("--tag", args.tag),
                                          ("--tag-position", args.tag_position), ("--genre-ratio", args.genre_ratio),
                                          ("--seed", args.seed)) if value is not None]
    if given:
        raise AceStepError(f"{', '.join(given)}: with --update the settings of {args.update} are kept; leave "
                           "them out (change them on the Dataset tab, or build a new dataset with --out).")
    out = args.update if args.out is None else args.out
    same_file = out.resolve() == args.update.resolve()
    if not same_file and out.exists() and not args.overwrite:
        raise AceStepError(f"{out} exists; pass --overwrite to replace it, or leave out --out to update "
                           f"{args.update} itself.")
    existing, revision = load_dataset_revision(args.update)
    result = update_dataset(existing, args.audio_dir, all_instrumental=args.instrumental, language=args.language,
                            drop_missing=args.drop_missing)
    # refused if the file changed since it was read (the web app saving it, say)
    save_dataset(result.dataset, out, expected_revision=revision if same_file else None)
    print(f"Updated {args.update} from {args.audio_dir}: {result.summary()}."
          + ("" if same_file else f" Wrote {out}."))
    for sample in result.missing:
        print(f"  missing: {existing.audio_path(sample)}")
    if result.missing and not result.dropped:
        print("  (their samples are kept; pass --drop-missing to remove them)")
    for sample in result.elsewhere:
        print(f"  kept, outside {args.audio_dir}: {existing.audio_path(sample)}")
    for warning in result.warnings:
        print(f"  warning: {warning}")
    print_failures(result.failed)
    return EXIT_PARTIAL if result.failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    """Check a dataset, or the one an audio folder would build: durations, formats, clipping,
    silence, duplicates, missing labels, and the files that cannot be used (for a folder, those
    `build` would leave out too). Exit status 2 when some file is unreadable, as `build`'s."""
    import json

    from acestep.dataset import dataset_report, format_report, load_dataset
    from acestep.dataset.report import folder_report

    if args.dataset.is_dir():
        report = folder_report(args.dataset, analyse_audio=not args.no_audio)
    else:
        report = dataset_report(load_dataset(args.dataset), analyse_audio=not args.no_audio)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return EXIT_PARTIAL if report.unreadable else 0


def cmd_tags(args: argparse.Namespace) -> int:
    """Add or remove a tag in the captions and/or genres of a dataset's samples, in place."""
    from acestep.dataset import load_dataset_revision, save_dataset
    from acestep.dataset.tags import edit_tags

    dataset, revision = load_dataset_revision(args.dataset)
    action, tag = ("add", args.add) if args.add is not None else ("remove", args.remove)
    where = "caption and genre" if args.field == "both" else args.field
    result = edit_tags(dataset, action, tag, where, args.samples)
    if result.changed:  # refused if the file changed since it was read (the web app saving it, say)
        save_dataset(result.dataset, args.dataset, expected_revision=revision)
    print(f"{result.message} {'Saved' if result.changed else 'Nothing to save in'} {args.dataset}.")
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    """Encode a dataset into training tensors (VAE latents, text and lyric encodings, conditions)."""
    from acestep.preprocess.pipeline import PreprocessSettings, preprocess_dataset

    def show(event) -> None:
        if event.status in ("encoding", "pass 2") and not args.verbose:
            return
        width = len(str(event.total))
        detail = f"  {event.message}" if event.message else ""
        print(f"[{event.index:>{width}}/{event.total}] {event.status:8s} {event.source}{detail}   "
              f"elapsed {format_clock(event.elapsed)}  ETA {format_clock(event.eta)}", flush=True)

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
              f"ETA {format_clock(event.eta)}", flush=True)

    with stop_on_ctrl_c("the current file") as should_stop:
        summary = label_folder(args.folder, build_labellers(args), mode=args.mode.replace("-", "_"),
                               csv_path=args.csv, cache_dir=args.cache_dir, use_cache=not args.no_cache,
                               progress=show, should_stop=should_stop)
    print(summary.describe())
    if summary.cancelled:
        return EXIT_STOPPED
    return EXIT_PARTIAL if summary.failed else 0


def add_commands(commands) -> None:
    split = commands.add_parser("split", help="cut long audio files into 30 s or 60 s WAV segments, with their "
                                "labels (not the lyrics)")
    split.add_argument("in_dir", type=Path, metavar="IN_DIR", help="folder of audio files (searched recursively)")
    split.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="where the segments go (sub-folders kept)")
    # (30, 60) is acestep.audio.split.SEGMENT_CHOICES, not imported: the CLI starts without the audio stack
    split.add_argument("--segment", type=int, choices=(30, 60), default=30, help="segment length in seconds")
    split.add_argument("--min-tail", type=float, default=10.0,
                       help="drop a last segment shorter than this many seconds (default 10)")
    split.set_defaults(func=cmd_split)

    build = commands.add_parser("build", help="scan an audio folder and its sidecars into a dataset JSON, or add "
                                              "its new songs to one (--update)")
    build.add_argument("audio_dir", type=Path, metavar="AUDIO_DIR",
                       help="folder of audio files and their sidecars (searched recursively)")
    build.add_argument("--out", type=Path, default=None, metavar="DATASET.json",
                       help="the dataset file to write (required without --update; with it, default: the updated "
                            "file itself)")
    build.add_argument("--update", type=Path, default=None, metavar="EXISTING.json",
                       help="add the folder's new audio files to this dataset, keeping every existing sample (and "
                            "its edits) and the dataset's settings; samples whose audio is gone are listed")
    build.add_argument("--drop-missing", action="store_true",
                       help="with --update: remove the samples whose audio file is gone (default: keep them)")
    build.add_argument("--name", default=None, help="dataset name (default: the folder's name)")
    build.add_argument("--tag", default=None, help="trigger tag added to every caption (e.g. 'mystyle')")
    build.add_argument("--tag-position", choices=("prepend", "append", "replace"), default=None,
                       help="where the tag goes; 'replace' drops the captions (default prepend)")
    build.add_argument("--genre-ratio", type=float, default=None,
                       help="share of samples prompted with their genre instead of the caption (0-1, default 0)")
    build.add_argument("--instrumental", action="store_true",
                       help="mark every sample instrumental (with --update: every new sample)")
    build.add_argument("--language", default=None,
                       help="language code for samples that do not name one (with --update: new samples)")
    build.add_argument("--seed", type=int, default=None,
                       help=f"seed of the genre-ratio choice (default {DEFAULT_SEED})")
    build.add_argument("--overwrite", action="store_true", help="replace an existing dataset JSON")
    build.set_defaults(func=cmd_build)

    report = commands.add_parser("report", help="check a dataset (or an audio folder) and print a report")
    report.add_argument("dataset", type=Path, metavar="DATASET", help="dataset JSON or audio folder")
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    report.add_argument("--no-audio", action="store_true", help="skip decoding (no clipping/silence checks)")
    report.set_defaults(func=cmd_report)

    tags = commands.add_parser("tags", help="add or remove a tag in the captions or genres of a dataset's samples")
    tags.add_argument("dataset", type=Path, metavar="DATASET.json", help="the dataset file, edited in place")
    edit = tags.add_mutually_exclusive_group(required=True)
    edit.add_argument("--add", metavar="TAG", help="add this tag where it is missing (at the end)")
    edit.add_argument("--remove", metavar="TAG", help="remove this tag (whole comma-separated tags, any case)")
    tags.add_argument("--field", choices=("caption", "genre", "both"), default="caption",
                      help="where to add or remove it (default caption)")
    tags.add_argument("--samples", default="", metavar="LIST",
                      help="samples by number, in the file's order from 1 as the Dataset tab lists them, e.g. '1-3,7' "
                           "(default all)")
    tags.set_defaults(func=cmd_tags)

    pre = commands.add_parser("preprocess", help="encode a dataset into training tensors")
    pre.add_argument("--dataset", type=Path, required=True, metavar="DATASET.json",
                     help="the dataset file `acestep-trainer build` wrote")
    pre.add_argument("--checkpoint", required=True, metavar="DIT",
                     help="DiT folder, folder name in the checkpoints directory, or HF id")
    pre.add_argument("--out", type=Path, required=True, metavar="TENSORS_DIR",
                     help="folder for the tensors and their manifest (a re-run skips what is unchanged)")
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
    checkpoints_dir_arg(pre)
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
    checkpoints_dir_arg(caption)
    caption.set_defaults(func=cmd_caption)
