"""`acestep-trainer preview`: render a caption with a base checkpoint, optionally with an adapter at
several strengths (same seed, same noise), into wav files and spectrogram PNGs.

`add_preview_arguments(parser)` declares the options; `run_preview(args)` runs the command and
returns the exit status (AceStepError propagates to the CLI, which prints its message).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from acestep.errors import PreviewError
from acestep.files import write_atomically
from acestep.inference import GUIDANCE_METHODS
from acestep.inference.render import BASE_NAME, RECORD_NAME, strength_name
from acestep.training.config_schema import QUANTIZATIONS


def parse_strengths(text: str) -> list[float]:
    """`"0,0.5,1"` -> [0.0, 0.5, 1.0]; distinct numbers of 0 or more."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"strengths must be numbers separated by commas, e.g. 0,0.5,1; got {text!r}") from None
    if not values or len(set(values)) != len(values) or any(not v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"strengths must be distinct numbers of 0 or more, e.g. 0,0.5,1; got {text!r}")
    return values


def add_preview_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `acestep-trainer preview`."""
    parser.add_argument("--checkpoint", default=None,
                        help="the base DiT: a model folder, a name in the checkpoints directory, or an HF id "
                             "(default with --adapter: the one the adapter was trained on)")
    parser.add_argument("--adapter", type=Path, default=None,
                        help="an adapter folder or file to apply, or a run (its final/ adapter); without it the base "
                             "model is rendered")
    parser.add_argument("--caption", required=True, help="what to render (include the adapter's trigger tag)")
    parser.add_argument("--lyrics", default="", help="lyrics (default: an instrumental)")
    parser.add_argument("--language", default="en", help="language code of the lyrics (default: en)")
    parser.add_argument("--bpm", type=float, default=None, help="tempo written into the prompt")
    parser.add_argument("--key", default="",
                        help="key and scale written into the prompt, e.g. 'C major' ('Am' is written 'A minor')")
    parser.add_argument("--time-signature", default="",
                        help="time signature written into the prompt, e.g. 4 ('4/4' is written '4')")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of audio (default: 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (default: 0)")
    parser.add_argument("--strengths", type=parse_strengths, default=None,
                        help="adapter strengths, comma-separated (default with --adapter: 0,1; 0 is the base model, "
                             "and with 0 among them the adapter effect of the others is printed and recorded)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: turbo 8, base/sft 50)")
    parser.add_argument("--shift", type=float, default=None, help="timestep shift (default: turbo 3, base/sft 1)")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="guidance scale for base/sft (default: 7; turbo samples without guidance)")
    parser.add_argument("--guidance", choices=GUIDANCE_METHODS, default="apg",
                        help="guidance method for base/sft: apg (upstream's default) or cfg (plain CFG)")
    parser.add_argument("--songs", type=Path, default=None, metavar="TENSORS_DIR",
                        help="a preprocessed tensors folder (your songs): also measure each render's latent "
                             "distance to them, printed and recorded (lower is closer)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the wav and PNG files")
    parser.add_argument("--overwrite", action="store_true", help="replace preview files already in --out")
    parser.add_argument("--vae", default=None, help="VAE folder (default: vae/ beside the checkpoint)")
    parser.add_argument("--text-encoder", default=None,
                        help="text encoder folder (default: Qwen3-Embedding-0.6B/ beside the checkpoint)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu, ... (default: cuda when available)")
    parser.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                        help="model dtype (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default="none",
                        help="nf4: hold the DiT's attention and MLP weights in 4 bits (bitsandbytes), as training "
                             "with model.quantization=nf4 does: about a quarter of their memory, for the 4B XL "
                             "models on small cards (LoRA and DoRA adapters only)")
    parser.add_argument("--checkpoints-dir", type=Path, default=None,
                        help="folder holding the model folders (default: $ACESTEP_CHECKPOINTS_DIR, else checkpoints/)")


def run_preview(args: argparse.Namespace) -> int:
    """Render the request at each strength (or once without an adapter) into `--out`, with a
    `preview.json` saying what was rendered and, with strength 0 among the strengths, the adapter
    effect of the others and, with `--songs`, each render's latent distance to those songs
    (`acestep.inference.effect`); prints each file. Raises PreviewError, PreprocessError (--songs),
    CheckpointError or AdapterError with the fix."""
    from acestep.inference.effect import (adapter_effects, distance_summary, effect_summary, songs_distances,
                                          songs_profile)
    from acestep.dataset.values import normalize_keyscale, normalize_timesignature
    from acestep.inference.preview import PreviewRenderer, PreviewRequest, sampling_settings
    from acestep.inference.render import write_preview
    from acestep.training.quantization import load_transformer

    if args.adapter is None and args.strengths is not None:
        raise PreviewError("--strengths needs --adapter: strengths scale an adapter")
    if args.adapter is None and args.checkpoint is None:
        raise PreviewError("give --checkpoint (the model to render), or --adapter (rendered on the model it was "
                           "trained on)")
    strengths = (args.strengths or [0.0, 1.0]) if args.adapter is not None else [None]
    names = [BASE_NAME if s is None else strength_name(s) for s in strengths]
    taken = [args.out / f"{name}{ext}" for name in names for ext in (".wav", ".png")
             if (args.out / f"{name}{ext}").exists()]
    if taken and not args.overwrite:
        raise PreviewError(f"{args.out} already holds {', '.join(p.name for p in taken)}; choose another --out or "
                           "pass --overwrite")
    request = PreviewRequest(caption=args.caption, lyrics=args.lyrics, language=args.language, bpm=args.bpm,
                             keyscale=normalize_keyscale(args.key),  # "Am" as the dataset writes it: "A minor"
                             timesignature=normalize_timesignature(args.time_signature), duration=args.duration,
                             seed=args.seed, steps=args.steps, shift=args.shift, guidance_scale=args.guidance_scale,
                             guidance=args.guidance)
    checkpoint, adapter = args.checkpoint, None
    if args.adapter is not None:
        from acestep.export.formats import adapter_source, base_checkpoint

        adapter = adapter_source(args.adapter)
        checkpoint = base_checkpoint(adapter, checkpoint, args.checkpoints_dir)
    quantized = args.quantization != "none"
    if quantized:
        from acestep.export.lora import is_lokr_adapter
        from acestep.training.quantization import require_bitsandbytes

        require_bitsandbytes()
        if adapter is not None and is_lokr_adapter(adapter):
            raise PreviewError(f"{adapter} is a LoKr adapter; --quantization nf4 renders LoRA and DoRA adapters only: "
                               "leave --quantization out")
    songs = songs_profile(args.songs) if args.songs is not None else None  # a wrong folder stops before the models load
    renderer = PreviewRenderer(checkpoint, vae=args.vae, text_encoder=args.text_encoder, device=args.device,
                               dtype=args.dtype, checkpoints_dir=args.checkpoints_dir)
    settings = sampling_settings(request, renderer.is_turbo)  # refuses guidance on turbo before the DiT loads
    bundle = load_transformer(checkpoint, args.quantization, renderer.dtype, renderer.device, renderer.dtype,
                              args.checkpoints_dir)
    transformer = bundle.transformer
    if adapter is not None:
        from acestep.export import load_adapter

        transformer = load_adapter(transformer, adapter)
    print(f"Rendering {request.duration:g} s with {bundle.path} ({bundle.variant}"
          + (f", {args.quantization.upper()}" if quantized else "") + ")"
          + (f" and {adapter}" if adapter is not None else ""), flush=True)
    renders, latents = {}, {}
    for strength, name in zip(strengths, names, strict=True):
        sampled = renderer.latents(transformer, request, strength=strength)
        latents[0.0 if strength is None else strength] = sampled[0].cpu().numpy()
        renders[strength] = renderer.decode(sampled)
        wav, png = write_preview(renders[strength], args.out, name)
        print(f"  {name}: {wav}  {png}", flush=True)
    effects = adapter_effects(renders) if adapter is not None else {}
    if effects:
        print(f"Adapter effect (mean log-mel difference): {effect_summary(effects)}", flush=True)
    distances = songs_distances(latents, songs) if songs is not None else {}
    if distances:
        print(f"Latent distance to the songs of {args.songs}: {distance_summary(distances)}", flush=True)
    record = {"caption": request.caption, "lyrics": request.lyrics, "language": request.language, "bpm": request.bpm,
              "key": request.keyscale, "time_signature": request.timesignature, "duration": request.duration,
              "seed": request.seed, "steps": settings.steps, "shift": settings.shift,
              "guidance_scale": settings.guidance_scale, "guidance": settings.guidance_used,
              "checkpoint": str(bundle.path), "variant": bundle.variant, "quantization": args.quantization,
              "adapter": str(adapter) if adapter is not None else None,
              "strengths": [s for s in strengths if s is not None], "files": [f"{name}.wav" for name in names],
              "effect_db": effects, "songs": str(args.songs) if songs is not None else None,
              "songs_distance": distances}
    write_atomically(args.out / RECORD_NAME, json.dumps(record, indent=2) + "\n", PreviewError)
    print(f"Done: {len(names)} render(s) of {request.duration:g} s in {args.out}", flush=True)
    return 0
