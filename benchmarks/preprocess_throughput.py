"""Preprocessing throughput: seconds of audio the VAE encodes per second, and captions, lyrics and
conditions the text encoder and the condition encoder encode per second.

    env/bin/python benchmarks/preprocess_throughput.py --size real             # on a GPU: the real models
    env/bin/python benchmarks/preprocess_throughput.py --size tiny --audio-seconds 4   # CPU: checks the script

The models are built from their configs with random weights (nothing downloaded): the ACE-Step
1.5 VAE (`AutoencoderOobleck`, 48 kHz, hop 1920, diffusers' own initialisation), Qwen3-Embedding-
0.6B (a transformers `Qwen3Model`) and the 2B checkpoint's condition encoder; `--size tiny` uses
the tiny test configs of `acestep.models.tiny`. They run on the device and in the dtype
`preprocess_dataset` picks (bf16 on a CUDA GPU), through the functions it calls
(`acestep.preprocess.encode`): the VAE one sample at a time in chunks of `chunk_seconds` with
`overlap_seconds` of context (the `PreprocessSettings` defaults), the caption through the whole
text encoder, the lyrics through its token embeddings, then the condition encoder with the
timbre slot. The real tokenizer is not downloaded: a stand-in gives each prompt `--caption-tokens`
and `--lyric-tokens` random ids (a typical song: about 150 and 500). Audio decoding, resampling and
file writing are not timed. `--json` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from common import QWEN3_EMBEDDING_CONFIG, VAE_48K_CONFIG, model_config, random_module, timed

from acestep.models.config import parse_model_config
from acestep.models.load import build_component
from acestep.models.tiny import TINY_TEXT_ENCODER_CONFIG, TINY_VAE_CONFIG
from acestep.preprocess import encode
from acestep.preprocess.pipeline import PreprocessSettings, _pick_device, _pick_dtype
from acestep.preprocess.prompts import caption_prompt, lyric_prompt

TINY_TEXT_VOCAB = 640


class SyntheticTokenizer:
    """Stands in for the Qwen tokenizer: any prompt becomes `tokens` random ids (fewer when the
    caller truncates to `max_length`), with the call signature `encode` uses."""

    def __init__(self, tokens: int, vocab: int, seed: int = 0):
        self.tokens, self.vocab = tokens, vocab
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, text: str, max_length: int | None = None, truncation: bool = False,
                 return_tensors: str = "pt") -> SimpleNamespace:
        count = min(self.tokens, max_length) if truncation and max_length else self.tokens
        return SimpleNamespace(input_ids=torch.randint(self.vocab, (1, count), generator=self.generator))


def build_models(size: str, device: torch.device, dtype: torch.dtype) -> dict:
    """The VAE, the text encoder and the condition encoder of `size` (tiny | real), random weights."""
    from diffusers import AutoencoderOobleck
    from transformers import Qwen3Config, Qwen3Model

    tiny = size == "tiny"
    with warnings.catch_warnings(), torch.device(device):
        warnings.filterwarnings("ignore", message=".*weight_norm.* is deprecated", category=FutureWarning)
        vae = AutoencoderOobleck(**(TINY_VAE_CONFIG if tiny else VAE_48K_CONFIG))
        text_config = {**TINY_TEXT_ENCODER_CONFIG, "vocab_size": TINY_TEXT_VOCAB} if tiny else QWEN3_EMBEDDING_CONFIG
        text_encoder = Qwen3Model(Qwen3Config(**text_config))
    dit = parse_model_config(model_config("tiny" if tiny else "2b"))
    condition_encoder = random_module(build_component(dit, "condition_encoder"), device, dtype)
    timbre = torch.randn(int(dit.raw["timbre_fix_frame"]), int(dit.raw["timbre_hidden_dim"]))  # silence latent frames
    # nn.Module.to: diffusers' own `to` warns about a dtype cast that the loader does while reading
    return {"vae": torch.nn.Module.to(vae, dtype).eval().requires_grad_(False),
            "text_encoder": text_encoder.to(dtype).eval().requires_grad_(False),
            "condition_encoder": condition_encoder, "timbre": timbre, "vocab": text_config["vocab_size"]}


def measure(models: dict, args, device: torch.device) -> dict:
    settings = PreprocessSettings()
    samples = int(args.audio_seconds * encode.SAMPLE_RATE) // encode.SAMPLES_PER_FRAME * encode.SAMPLES_PER_FRAME
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, (2, samples)).astype(np.float32)
    generator = torch.Generator().manual_seed(0)
    vae = timed(device, args.repeats, lambda: encode.encode_latents(
        models["vae"], audio, generator, settings.chunk_seconds, settings.overlap_seconds))
    text_encoder = models["text_encoder"]
    captions = SyntheticTokenizer(args.caption_tokens, models["vocab"])
    lyrics = SyntheticTokenizer(args.lyric_tokens, models["vocab"], seed=1)
    prompt = caption_prompt("a warm jazz ballad with soft piano", 90, "4", "C major", args.audio_seconds)
    lyric_text = lyric_prompt("[Verse]\nthe night is young", "en", False)
    caption_hidden = encode.encode_caption(text_encoder, captions, prompt)
    lyric_hidden = encode.embed_lyrics(text_encoder, lyrics, lyric_text)
    caption = timed(device, args.repeats, lambda: encode.encode_caption(text_encoder, captions, prompt))
    lyric = timed(device, args.repeats, lambda: encode.embed_lyrics(text_encoder, lyrics, lyric_text))
    condition = timed(device, args.repeats, lambda: encode.encode_condition(
        models["condition_encoder"], caption_hidden, lyric_hidden, models["timbre"]))
    per_sample = vae + caption + lyric + condition
    return {"audio_seconds": samples / encode.SAMPLE_RATE, "chunk_seconds": settings.chunk_seconds,
            "overlap_seconds": settings.overlap_seconds, "caption_tokens": caption_hidden.shape[0],
            "lyric_tokens": lyric_hidden.shape[0], "vae_seconds": vae, "caption_seconds": caption,
            "lyric_seconds": lyric, "condition_seconds": condition,
            "vae_audio_seconds_per_second": samples / encode.SAMPLE_RATE / vae, "captions_per_second": 1 / caption,
            "lyrics_per_second": 1 / lyric, "conditions_per_second": 1 / condition,
            "text_samples_per_second": 1 / (caption + lyric + condition),
            "audio_seconds_per_second": samples / encode.SAMPLE_RATE / per_sample}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("tiny", "real"), default="real")
    parser.add_argument("--audio-seconds", type=float, default=120.0, help="length of the clip the VAE encodes")
    parser.add_argument("--caption-tokens", type=int, default=150)
    parser.add_argument("--lyric-tokens", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None, help="default: what preprocessing picks (cuda, mps, cpu)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = _pick_device(args.device)
    dtype = _pick_dtype(None, device)
    began = time.perf_counter()
    models = build_models(args.size, device, dtype)
    built = time.perf_counter() - began
    with torch.inference_mode():
        figures = measure(models, args, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    report = {"device": name, "torch": torch.__version__, "size": args.size, "dtype": str(dtype).replace("torch.", ""),
              "build_seconds": built, "peak_memory_gib": peak, **figures}
    f = report
    print(f"device {name}, torch {torch.__version__}, models {args.size} ({f['dtype']}, random weights, built in "
          f"{built:.1f} s)" + (f", peak memory {peak:.1f} GiB" if peak is not None else ""))
    print(f"  VAE: {f['audio_seconds']:g} s of audio in {f['vae_seconds']:.3f} s ({f['chunk_seconds']:g} s chunks, "
          f"{f['overlap_seconds']:g} s overlap): {f['vae_audio_seconds_per_second']:.1f} s of audio per second "
          f"({f['vae_audio_seconds_per_second']:.0f}x real time)")
    print(f"  caption ({f['caption_tokens']} tokens, whole text encoder): {f['captions_per_second']:.1f} captions/s")
    print(f"  lyrics ({f['lyric_tokens']} tokens, token embeddings): {f['lyrics_per_second']:.1f} lyrics/s")
    print(f"  condition encoder (lyrics + timbre + caption): {f['conditions_per_second']:.1f} conditions/s")
    print(f"  text and condition path: {f['text_samples_per_second']:.1f} samples/s; with the VAE, one "
          f"{f['audio_seconds']:g} s song: {f['audio_seconds_per_second']:.1f} s of audio per second")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
