"""Model commands: list, download and inspect checkpoints; write the tiny test checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path

from acestep.commands.common import checkpoints_dir_arg
from acestep.errors import AceStepError


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


def _dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def add_commands(commands) -> None:
    models = commands.add_parser("models", help="list the model folders in the checkpoints directory")
    checkpoints_dir_arg(models)
    models.set_defaults(func=cmd_models)

    download = commands.add_parser("download", help="download official models from the Hugging Face Hub")
    download.add_argument("names", nargs="*", metavar="NAME",
                          help="folder names (acestep-v15-turbo, vae, Qwen3-Embedding-0.6B, ...) or HF ids")
    download.add_argument("--list", action="store_true", help="list the official models and exit")
    checkpoints_dir_arg(download)
    download.set_defaults(func=cmd_download)

    inspect = commands.add_parser("inspect", help="load a DiT checkpoint strictly and describe it")
    inspect.add_argument("checkpoint", help="checkpoint folder, folder name in the checkpoints directory, or HF id")
    inspect.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16",
                         help="dtype to load the weights in (default bf16)")
    checkpoints_dir_arg(inspect)
    inspect.set_defaults(func=cmd_inspect)

    tiny = commands.add_parser("tiny-checkpoint",
                               help="write a tiny random checkpoints directory (tests and the offline demo)")
    tiny.add_argument("out_dir", type=Path, metavar="OUT_DIR",
                      help="the folder to write acestep-v15-turbo/, vae/ and Qwen3-Embedding-0.6B/ into")
    tiny.add_argument("--seed", type=int, default=0, help="random seed of the weights (default 0)")
    tiny.add_argument("--overwrite", action="store_true", help="replace model folders already in OUT_DIR")
    tiny.set_defaults(func=cmd_tiny_checkpoint)
