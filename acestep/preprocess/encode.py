"""Model-facing encoding steps of preprocessing: audio -> VAE latents, caption -> Qwen3 hidden
states, lyrics -> Qwen3 token embeddings, and the condition encoder that packs them with the
timbre slot. Each function takes loaded models and tensors and returns tensors.
"""

from __future__ import annotations

import numpy as np
import torch

from acestep.preprocess.prompts import LYRIC_MAX_TOKENS, TEXT_MAX_TOKENS

SAMPLE_RATE = 48_000
SAMPLES_PER_FRAME = 1920  # VAE hop: 25 latent frames per second
FRAMES_PER_SECOND = SAMPLE_RATE // SAMPLES_PER_FRAME


def trim_to_whole_frames(audio: np.ndarray) -> np.ndarray:
    """Drop the last partial frame so that frames = samples / 1920 exactly."""
    usable = (audio.shape[-1] // SAMPLES_PER_FRAME) * SAMPLES_PER_FRAME
    return audio[..., :usable]


def _model_place(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(module.parameters())
    return parameter.device, parameter.dtype


@torch.no_grad()
def encode_latents(vae, audio: np.ndarray, generator: torch.Generator, chunk_seconds: float = 30.0,
                   overlap_seconds: float = 2.0) -> torch.Tensor:
    """Stereo 48 kHz audio `[2, n]` (n a multiple of 1920) -> latents `[n / 1920, 64]`, fp32.

    A sample of the VAE posterior (`mean + std * noise`, no scaling or shift), as the official
    preprocessing does. Long audio is encoded in chunks with `overlap_seconds` of context on each
    side, the overlap discarded, so memory stays bounded. The noise comes from `generator` on the
    CPU, so a seed gives the same latents on any device.
    """
    if audio.shape[0] != 2 or audio.shape[-1] % SAMPLES_PER_FRAME:
        raise ValueError(f"expected stereo audio of whole frames, got shape {audio.shape}")
    device, dtype = _model_place(vae)
    frames = audio.shape[-1] // SAMPLES_PER_FRAME
    chunk = max(1, int(round(chunk_seconds * FRAMES_PER_SECOND)))
    overlap = int(round(overlap_seconds * FRAMES_PER_SECOND))
    waveform = torch.from_numpy(np.ascontiguousarray(audio))
    means, stds = [], []
    for start in range(0, frames, chunk):
        stop = min(frames, start + chunk)
        lo, hi = max(0, start - overlap), min(frames, stop + overlap)
        piece = waveform[:, lo * SAMPLES_PER_FRAME: hi * SAMPLES_PER_FRAME]
        posterior = vae.encode(piece[None].to(device=device, dtype=dtype)).latent_dist
        keep = slice(start - lo, stop - lo)
        means.append(posterior.mean[0, :, keep].float().cpu())
        stds.append(posterior.std[0, :, keep].float().cpu())
    mean, std = torch.cat(means, dim=1), torch.cat(stds, dim=1)
    noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32)
    return (mean + std * noise).transpose(0, 1).contiguous()


@torch.no_grad()
def encode_caption(text_encoder, tokenizer, prompt: str) -> torch.Tensor:
    """Caption prompt -> Qwen3 `last_hidden_state` `[tokens, text_hidden]` (at most 256 tokens,
    no padding, no attention mask: the model runs causally as in the official code)."""
    device, _ = _model_place(text_encoder)
    ids = tokenizer(prompt, max_length=TEXT_MAX_TOKENS, truncation=True, return_tensors="pt").input_ids
    return text_encoder(input_ids=ids.to(device)).last_hidden_state[0]


@torch.no_grad()
def embed_lyrics(text_encoder, tokenizer, prompt: str) -> torch.Tensor:
    """Lyric prompt -> Qwen3 token embeddings only `[tokens, text_hidden]` (at most 2048 tokens);
    the DiT's own lyric encoder adds the context."""
    device, _ = _model_place(text_encoder)
    ids = tokenizer(prompt, max_length=LYRIC_MAX_TOKENS, truncation=True, return_tensors="pt").input_ids
    return text_encoder.embed_tokens(ids.to(device))[0]


@torch.no_grad()
def encode_condition(condition_encoder, text_hidden: torch.Tensor, lyric_hidden: torch.Tensor,
                     timbre_reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack one sample's condition: `(encoder_hidden_states [L, H], encoder_attention_mask [L])`
    with L = lyric tokens + 1 timbre slot + caption tokens, all valid (nothing is padded).

    `timbre_reference` is `[frames, 64]`: for text-to-music, the first `timbre_fix_frame` frames
    of the silence latent, as official inference uses when no reference audio is given.
    """
    device, dtype = _model_place(condition_encoder)

    def batch(tensor: torch.Tensor) -> torch.Tensor:
        return tensor[None].to(device=device, dtype=dtype)

    hidden, mask = condition_encoder(
        text_hidden_states=batch(text_hidden),
        text_attention_mask=torch.ones(1, text_hidden.shape[0], dtype=torch.long, device=device),
        lyric_hidden_states=batch(lyric_hidden),
        lyric_attention_mask=torch.ones(1, lyric_hidden.shape[0], dtype=torch.long, device=device),
        refer_audio_acoustic_hidden_states_packed=batch(timbre_reference),
        refer_audio_order_mask=torch.zeros(1, dtype=torch.long, device=device),
    )
    return hidden[0], mask[0]
