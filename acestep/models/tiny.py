"""Write a tiny random checkpoints directory in the official layout.

    checkpoints/
      acestep-v15-turbo/      config.json, model.safetensors (official key names, bf16), silence_latent.pt
      vae/                    config.json, diffusion_pytorch_model.safetensors (AutoencoderOobleck, 48 kHz, hop 1920)
      Qwen3-Embedding-0.6B/   config.json, model.safetensors, tokenizer.json, tokenizer_config.json

Everything downstream (preprocessing, training, export, the offline demo) runs on it exactly as
on the real models, only small: the DiT has the real interfaces (64 latent channels, 192 input
channels, patch 2, GQA, sliding and full layers), the VAE the real 48 kHz rate and hop of 1920
(25 latent frames per second) and 64 latent channels.

The weights are random (seeded, so the same seed writes the same files), which is all tests and
the demo need: no download is possible on the build machines.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from acestep.errors import AceStepError
from acestep.models import convert

TINY_DIT_NAME = "acestep-v15-turbo"
TINY_VAE_NAME = "vae"
TINY_TEXT_ENCODER_NAME = "Qwen3-Embedding-0.6B"
TEXT_HIDDEN = 32
SILENCE_FRAMES = 15_000  # as the official silence_latent.pt: 600 s at 25 frames/s

TINY_DIT_CONFIG = {
    "architectures": ["AceStepConditionGenerationModel"],
    "model_type": "acestep",
    "model_version": "turbo",
    "is_turbo": True,
    "dtype": "bfloat16",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "rope_theta": 1_000_000,
    "rope_scaling": None,
    "max_position_embeddings": 32768,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "use_sliding_window": True,
    "sliding_window": 16,
    "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
    "in_channels": 192,
    "audio_acoustic_hidden_dim": 64,
    "patch_size": 2,
    "text_hidden_dim": TEXT_HIDDEN,
    "timbre_hidden_dim": 64,
    "timbre_fix_frame": 750,
    "num_lyric_encoder_hidden_layers": 2,
    "num_timbre_encoder_hidden_layers": 2,
    "num_attention_pooler_hidden_layers": 1,
    "num_audio_decoder_hidden_layers": 4,
    "pool_window_size": 5,
    "fsq_dim": 64,
    "fsq_input_levels": [8, 8, 8, 5, 5, 5],
    "fsq_input_num_quantizers": 1,
    "timestep_mu": -0.4,
    "timestep_sigma": 1.0,
    "data_proportion": 0.5,
    "vocab_size": 64003,
    "initializer_range": 0.02,
    "use_cache": True,
    "lyric_alignment_layers_config": None,
}

# 64 latent channels force encoder_hidden_size 128 (mean and scale); multiples of 1 keep it
# small, and putting the big stride first keeps CPU encoding near real time.
TINY_VAE_CONFIG = {
    "encoder_hidden_size": 128,
    "downsampling_ratios": [10, 6, 4, 4, 2],
    "channel_multiples": [1, 1, 1, 1, 1],
    "decoder_channels": 8,
    "decoder_input_channels": 64,
    "audio_channels": 2,
    "sampling_rate": 48_000,
}

TINY_TEXT_ENCODER_CONFIG = {
    "hidden_size": TEXT_HIDDEN,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "max_position_embeddings": 4096,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_TOKENIZER_CORPUS = """
# Instruction
Fill the audio semantic mask based on the given conditions:
# Caption
# Metas
- bpm: N/A
- timesignature: 4
- keyscale: C major
- duration: 30 seconds
# Languages
en
# Lyric
[Verse] [Chorus] [Bridge] [Intro] [Outro] [Instrumental]
a warm jazz ballad with soft piano, upright bass and brushed drums, female vocals
energetic electronic dance music, heavy bass, bright synth leads, four on the floor
lo-fi hip hop beat, dusty vinyl crackle, mellow keys, relaxed groove
acoustic folk song with fingerpicked guitar and gentle harmonies
blues boogie woogie piano with walking bass and swing rhythm
rock anthem with distorted guitars, driving drums and a big chorus
ambient cinematic soundscape, evolving pads, slow tempo
the night is young and the city lights are calling out my name
we sing together under the open sky until the morning comes
0 1 2 3 4 5 6 7 8 9 major minor sharp flat A B C D E F G
"""


def _seeded_random_(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Overwrite every parameter with seeded noise (scaled like a trained net, norms around 1),
    in sorted-name order so the same seed gives the same weights."""
    with torch.no_grad():
        for name, param in sorted(module.named_parameters()):
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim >= 2:
                fan_in = param[0].numel()
                param.copy_(noise * (0.5 / fan_in**0.5))
            elif "norm" in name:  # RMSNorm weights: around 1, not around 0
                param.copy_(1.0 + 0.1 * noise)
            else:
                param.copy_(0.1 * noise)


def write_dit_checkpoint(folder: Path, config_dict: dict, generator: torch.Generator,
                         silence_latent: torch.Tensor) -> None:
    """Write a random DiT checkpoint for `config_dict` in the official layout: `config.json`,
    `model.safetensors` (official key names, bf16) and a channel-first `silence_latent.pt`.
    `silence_latent` is time-major `[1, frames, channels]`."""
    from acestep.models.config import parse_model_config
    from acestep.models.load import ALL_COMPONENTS, build_component

    config = parse_model_config(config_dict)
    state: dict[str, torch.Tensor] = {}
    for component in ALL_COMPONENTS:
        module = build_component(config, component).to_empty(device="cpu")
        _seeded_random_(module, generator)
        for key, tensor in module.state_dict().items():
            if component == convert.CONDITION_ENCODER and key == "silence_latent":
                continue  # stored in its own file, as upstream does
            state[convert.diffusers_key_to_original(component, key)] = tensor.to(torch.bfloat16).contiguous()
    folder.mkdir(parents=True)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n", encoding="utf-8")
    # The official file is a plain channel-first tensor saved with torch.save: [1, 64, frames].
    torch.save(silence_latent.transpose(1, 2).contiguous(), folder / "silence_latent.pt")


def _write_vae(folder: Path, generator: torch.Generator) -> torch.Tensor:
    """Write the tiny VAE and return its encoding of silence, time-major [1, frames, 64]."""
    from diffusers import AutoencoderOobleck

    # diffusers' own init (weight norm, Snake parameters) under the seed: noise would upset Snake.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        vae = AutoencoderOobleck(**TINY_VAE_CONFIG)
    vae.save_pretrained(folder, safe_serialization=True)
    with torch.inference_mode():
        # Like the official silence latent: a few distinct first frames, then one repeated vector.
        head = vae.encode(torch.zeros(1, 2, 1920 * 8)).latent_dist.mean.transpose(1, 2)
    tail = head[:, -1:].expand(1, SILENCE_FRAMES - head.shape[1], -1)
    return torch.cat([head, tail], dim=1).float()


def train_byte_level_bpe(corpus: str, vocab_size: int, special_tokens: list[str]):
    """A small byte-level BPE tokenizer (the kind Qwen uses) trained on `corpus`, deterministic:
    the same corpus gives the same vocabulary and merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([corpus], trainer=trainer)
    return bpe


def _write_text_encoder(folder: Path, generator: torch.Generator) -> None:
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

    bpe = train_byte_level_bpe(_TOKENIZER_CORPUS, 640, SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>",
                                        pad_token="<|endoftext|>", model_max_length=32768)
    config = Qwen3Config(vocab_size=bpe.get_vocab_size(), **TINY_TEXT_ENCODER_CONFIG)
    model = Qwen3Model(config)
    _seeded_random_(model, generator)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def write_tiny_checkpoints(out_dir: str | Path, seed: int = 0, overwrite: bool = False) -> Path:
    """Write the tiny checkpoints directory (DiT, VAE, text encoder) into `out_dir`.

    The folders are built in a temporary sibling directory and moved into place, so an
    interrupted run never leaves half a model. Existing model folders are refused unless
    `overwrite` is true. Returns `out_dir`.
    """
    out_dir = Path(out_dir).expanduser().resolve()
    names = (TINY_DIT_NAME, TINY_VAE_NAME, TINY_TEXT_ENCODER_NAME)
    existing = [name for name in names if (out_dir / name).exists()]
    if existing and not overwrite:
        raise AceStepError(
            f"{out_dir} already holds {', '.join(existing)}; choose an empty folder or pass --overwrite."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".tiny-") as tmp:
        staging = Path(tmp)
        silence = _write_vae(staging / TINY_VAE_NAME, generator)
        write_dit_checkpoint(staging / TINY_DIT_NAME, TINY_DIT_CONFIG, generator, silence)
        _write_text_encoder(staging / TINY_TEXT_ENCODER_NAME, generator)
        for name in names:
            if (out_dir / name).exists():
                shutil.rmtree(out_dir / name)
            (staging / name).rename(out_dir / name)
    return out_dir
