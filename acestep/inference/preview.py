"""Audio previews: text to music with a transformer (usually the one being trained, adapter and
all), through the same conditioning path as preprocessing and the sampler of `sampler.py`.

The renderer holds what does not change during training: the text encoder, the condition encoder
(its null embedding and silence latent) and the VAE. The transformer is passed to each call, so
the training transformer with its live adapter can be heard without a copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from acestep.errors import PreviewError
from acestep.gpu.precision import native_bf16
from acestep.inference.sampler import sample_latents, timestep_schedule
from acestep.inference.strength import adapter_strength, has_adapter

SAMPLE_RATE = 48_000
FRAMES_PER_SECOND = 25  # VAE hop 1920 at 48 kHz
MAX_SECONDS = 600.0  # the length of the official silence latent
PEAK_DBFS = -1.0  # official generate_music normalises every output to this peak
TURBO_DEFAULTS = {"steps": 8, "shift": 3.0, "guidance_scale": 1.0}
BASE_DEFAULTS = {"steps": 50, "shift": 1.0, "guidance_scale": 7.0}


@dataclass
class PreviewRequest:
    """What to render. Unset steps/shift/guidance_scale take the variant's defaults: turbo 8 steps,
    shift 3, no guidance; base/sft 50 steps, shift 1, guidance 7 (APG, as upstream; `guidance`
    "cfg" for plain CFG). `instrumental` None: instrumental exactly when `lyrics` is empty."""

    caption: str
    lyrics: str = ""
    instrumental: bool | None = None
    language: str = "en"
    bpm: float | None = None
    keyscale: str = ""
    timesignature: str = ""
    duration: float = 10.0
    seed: int = 0
    steps: int | None = None
    shift: float | None = None
    guidance_scale: float | None = None
    guidance: str = "apg"

    @property
    def frames(self) -> int:
        return math.ceil(self.duration * FRAMES_PER_SECOND)

    def condition_key(self) -> tuple:
        """The fields the encoded condition depends on (the duration only in whole seconds)."""
        return (self.caption, self.lyrics, self.is_instrumental, self.language, self.bpm, self.keyscale,
                self.timesignature, int(self.duration))

    @property
    def is_instrumental(self) -> bool:
        return not self.lyrics.strip() if self.instrumental is None else self.instrumental


@dataclass(frozen=True)
class SamplingSettings:
    """A request's sampler settings with the variant's defaults filled in."""

    steps: int
    shift: float
    guidance_scale: float
    guidance: str
    schedule: tuple[float, ...]

    @property
    def guidance_used(self) -> str:
        """What guided the sampling, as records write it: the method where the scale is above 1, else
        "none" (a scale of 1 or less samples without guidance, and a turbo model always does)."""
        return self.guidance if self.guidance_scale > 1.0 else "none"


def check_request(request: PreviewRequest) -> None:
    """Raise PreviewError naming the field when a request cannot be rendered."""
    if not request.caption.strip():
        raise PreviewError("the preview caption is empty; describe the music to render (e.g. the trigger tag "
                           "and a genre)")
    if not 0 < request.duration <= MAX_SECONDS:
        raise PreviewError(f"the preview duration must be more than 0 and at most {MAX_SECONDS:g} s, "
                           f"got {request.duration!r}")
    if request.instrumental and request.lyrics.strip():
        raise PreviewError("the request has lyrics but instrumental=True; drop the lyrics or set instrumental "
                           "to False (or None)")
    if isinstance(request.seed, bool) or int(request.seed) != request.seed or request.seed < 0:
        raise PreviewError(f"the preview seed must be a whole number of 0 or more, got {request.seed!r}")


def sampling_settings(request: PreviewRequest, is_turbo: bool) -> SamplingSettings:
    """Fill in the variant's defaults and check the result (turbo refuses guidance: it is distilled)."""
    defaults = TURBO_DEFAULTS if is_turbo else BASE_DEFAULTS
    steps = defaults["steps"] if request.steps is None else request.steps
    shift = defaults["shift"] if request.shift is None else request.shift
    scale = defaults["guidance_scale"] if request.guidance_scale is None else request.guidance_scale
    if is_turbo and scale > 1.0:
        raise PreviewError(f"turbo checkpoints are guidance-distilled and sample without CFG; guidance_scale "
                           f"{scale!r} is not supported (leave it unset or 1)")
    if scale < 0:
        raise PreviewError(f"guidance_scale must be 0 or more, got {scale!r}")
    schedule = tuple(timestep_schedule(is_turbo, steps, shift))
    return SamplingSettings(int(steps), float(shift), float(scale), request.guidance, schedule)


def _pick_device(device) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _pick_dtype(dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if dtype == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    if dtype not in names:
        raise PreviewError(f"dtype must be auto, bf16, fp16 or fp32, got {dtype!r}")
    return names[dtype]


def normalize_peak(audio: torch.Tensor, target_dbfs: float = PEAK_DBFS) -> torch.Tensor:
    """Official post-processing: scale so the peak is `target_dbfs` (silence stays silence)."""
    peak = audio.abs().amax().clamp(min=1e-6)
    return audio * (10.0 ** (target_dbfs / 20.0) / peak)


class PreviewRenderer:
    """Renders previews for one base checkpoint. The VAE is loaded at once; the text encoder and
    the condition encoder when a condition is first encoded. Conditions are cached per request
    text; with `keep_encoders=False` the two encoders are freed after each encoding (the training
    hook does this to keep the GPU for training). Raises CheckpointError for missing models."""

    def __init__(self, checkpoint, vae=None, text_encoder=None, device=None, dtype="auto",
                 checkpoints_dir: Path | None = None, keep_encoders: bool = True):
        from acestep.models.checkpoints import DIT, TEXT_ENCODER, VAE, resolve_model_path
        from acestep.models.config import read_dit_config
        from acestep.models.encoders import DEFAULT_TEXT_ENCODER, DEFAULT_VAE, load_vae

        self.device = _pick_device(device)
        self.dtype = _pick_dtype(dtype, self.device)
        self.checkpoints_dir = checkpoints_dir
        self.checkpoint = resolve_model_path(checkpoint, DIT, checkpoints_dir)
        self.config = read_dit_config(self.checkpoint)
        # Beside the DiT, as preprocessing finds them, unless given.
        self.text_encoder_path = resolve_model_path(text_encoder or self.checkpoint.parent / DEFAULT_TEXT_ENCODER,
                                                    TEXT_ENCODER, checkpoints_dir)
        vae_path = resolve_model_path(vae or self.checkpoint.parent / DEFAULT_VAE, VAE, checkpoints_dir)
        self.vae = load_vae(vae_path, dtype=self.dtype, device=self.device)
        self.vae.enable_tiling()  # long previews decode in 30 s windows, as diffusers' pipeline does
        self.keep_encoders = keep_encoders
        self._encoders = None  # (text_encoder, tokenizer, condition_encoder)
        self._conditions: dict[tuple, torch.Tensor] = {}
        self.null_condition_emb: torch.Tensor | None = None
        self.silence_latent: torch.Tensor | None = None

    @property
    def is_turbo(self) -> bool:
        return self.config.variant.endswith("turbo")

    # ---- conditioning ----------------------------------------------------------------------------
    def _load_encoders(self):
        from acestep.models.encoders import load_text_encoder
        from acestep.models.load import load_acestep

        text_encoder, tokenizer = load_text_encoder(self.text_encoder_path, dtype=self.dtype, device=self.device)
        bundle = load_acestep(self.checkpoint, dtype=self.dtype, device=self.device,
                              components=("condition_encoder",), checkpoints_dir=self.checkpoints_dir)
        self.null_condition_emb = bundle.null_condition_emb.detach()
        self.silence_latent = bundle.silence_latent.float()
        return text_encoder, tokenizer, bundle.condition_encoder

    @torch.no_grad()
    def condition(self, request: PreviewRequest) -> torch.Tensor:
        """The packed condition `[1, L, H]` of a request, as preprocessing encodes a sample: caption
        prompt through Qwen3, lyric prompt through its embedding table, silence-latent timbre."""
        from acestep.preprocess.encode import embed_lyrics, encode_caption, encode_condition
        from acestep.preprocess.prompts import caption_prompt, lyric_prompt

        key = request.condition_key()
        if key in self._conditions:
            return self._conditions[key]
        if self._encoders is None:
            self._encoders = self._load_encoders()
        text_encoder, tokenizer, condition_encoder = self._encoders
        try:
            text = encode_caption(text_encoder, tokenizer, caption_prompt(
                request.caption, request.bpm, request.timesignature, request.keyscale, request.duration))
            lyrics = embed_lyrics(text_encoder, tokenizer, lyric_prompt(
                request.lyrics, request.language, request.is_instrumental))
            timbre = self.silence_latent[0, : int(self.config.raw.get("timbre_fix_frame", 750))]
            states, _ = encode_condition(condition_encoder, text, lyrics, timbre)
        finally:
            if not self.keep_encoders:
                self.release_encoders()
        self._conditions[key] = states[None]
        return self._conditions[key]

    def release_encoders(self) -> None:
        """Free the text and condition encoders (reloaded when a new caption needs them)."""
        self._encoders = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ---- rendering -------------------------------------------------------------------------------
    def _check_transformer(self, transformer) -> None:
        config = transformer.config
        width = transformer.condition_embedder.weight.shape[1]
        turbo = bool(getattr(config, "is_turbo", self.is_turbo))
        if width != self.config.encoder_hidden_size or turbo != self.is_turbo:
            raise PreviewError(
                f"the transformer does not belong to {self.checkpoint} (condition width {width} vs "
                f"{self.config.encoder_hidden_size}, turbo {turbo} vs {self.is_turbo}); render with a renderer "
                "made for its checkpoint")

    @torch.no_grad()
    def latents(self, transformer, request: PreviewRequest, strength: float | None = None) -> torch.Tensor:
        """Sampled latents `[1, frames, 64]` (fp32) for a request; the transformer runs in eval mode
        and every module's mode is put back afterwards."""
        from acestep.training.objective import context_latents

        check_request(request)
        self._check_transformer(transformer)
        settings = sampling_settings(request, self.is_turbo)
        if strength is not None and not has_adapter(transformer):
            raise PreviewError("a strength was given but the transformer has no adapter; load one first")
        condition = self.condition(request)
        context = context_latents(self.silence_latent, request.frames, 1)
        generator = torch.Generator().manual_seed(int(request.seed))
        modes = {module: module.training for module in transformer.modules()}
        transformer.eval()
        try:
            return sample_latents(transformer, condition, self.null_condition_emb, context, request.frames,
                                  list(settings.schedule), settings.guidance_scale, generator, strength=strength,
                                  guidance=settings.guidance)
        finally:
            for module, training in modes.items():
                module.training = training

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents `[1, frames, 64]` -> stereo 48 kHz float32 `[2, frames * 1920]`, peak at -1 dBFS."""
        with torch.autocast(device_type=self.device.type, enabled=False):
            audio = self.vae.decode(latents.transpose(1, 2).to(device=self.device, dtype=self.dtype)).sample
        return normalize_peak(audio[0].float()).cpu().numpy().astype(np.float32)

    def render(self, transformer, request: PreviewRequest, strength: float | None = None) -> np.ndarray:
        """Stereo 48 kHz float32 audio `[2, n]` for `request`, n = ceil(duration · 25) · 1920.

        `strength` None: the adapter as it is (or no adapter); 0: adapter off; s: adapter scaled by s.
        The adapter's state is exactly as before afterwards. Raises PreviewError on a bad request.
        """
        return self.decode(self.latents(transformer, request, strength))

    def render_ab(self, transformer, request: PreviewRequest, strengths=(0.0, 0.5, 1.0)) -> dict[float, np.ndarray]:
        """The same request (same seed, same noise) at each adapter strength: {strength: audio}."""
        if not strengths:
            raise PreviewError("render_ab needs at least one strength")
        return {float(s): self.render(transformer, request, strength=float(s)) for s in strengths}


__all__ = ["PreviewRenderer", "PreviewRequest", "SamplingSettings", "adapter_strength", "check_request",
           "sampling_settings"]
