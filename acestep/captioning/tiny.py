"""Tiny random stand-ins for ACE-Step/acestep-captioner and ACE-Step/acestep-transcriber.

Both real repos are fine-tunes of Qwen/Qwen2.5-Omni-7B saved by transformers 4.5x. The folders
written here have the same files and formats, only tiny and random, so the real loading code runs
on them in tests and demos with no download:

- `config.json`: model_type "qwen2_5_omni" with `thinker_config` (audio encoder, vision encoder,
  text model, written in the 4.x style with `rope_scaling` and `torch_dtype`) and `talker_config`;
- sharded bf16 safetensors (`model-0000N-of-00002.safetensors` + `model.safetensors.index.json`)
  with the original names: `thinker.model.*`, `thinker.audio_tower.*`, `thinker.visual.*`,
  `thinker.lm_head.weight`, and `talker.*` weights that a text-only loader must skip
  (token2wav and `spk_dict.pt` are left out: nothing here reads them);
- a byte-level BPE tokenizer with Qwen2.5-Omni's special tokens in their order
  (`tokenizer.json`, `vocab.json`, `merges.txt`, `tokenizer_config.json`, `added_tokens.json`,
  `special_tokens_map.json`), Qwen2.5-Omni's chat template in `chat_template.json`;
- `preprocessor_config.json` identical to the real one (Whisper features, 128 mel bins,
  16 kHz, up to 300 s per audio), and `generation_config.json` with both end tokens.

A random model writes byte soup; tests that need readable output replace the generation step.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

CAPTIONER_FOLDER = "acestep-captioner"
TRANSCRIBER_FOLDER = "acestep-transcriber"

# Qwen2.5-Omni's special tokens in the order of its added_tokens.json (ids 151643...).
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<|box_end|>",
    "<|quad_start|>", "<|quad_end|>", "<|vision_bos|>", "<|vision_eos|>", "<|vision_pad|>", "<|IMAGE|>", "<|VIDEO|>",
)
# The embedding has a few rows past the tokenizer, as the real one (152064 rows, 151665 tokens).
EXTRA_EMBEDDING_ROWS = 6

# Qwen2's pre-tokenizer split pattern.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen2.5-Omni's chat template (chat_template.json of Qwen/Qwen2.5-Omni-7B).
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}{% if add_audio_id %}Audio {{ audio_count.value }}: "
    "{% endif %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

PREPROCESSOR_CONFIG = {
    "chunk_length": 300, "dither": 0.0, "feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 128,
    "hop_length": 160, "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "Qwen2VLImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711], "max_pixels": 12845056, "merge_size": 2, "min_pixels": 3136,
    "n_fft": 400, "n_samples": 4800000, "nb_max_frames": 30000, "padding_side": "right", "padding_value": 0.0,
    "patch_size": 14, "processor_class": "Qwen2_5OmniProcessor", "return_attention_mask": True,
    "sampling_rate": 16000, "temporal_patch_size": 2,
}


def write_tiny_omni(folder: str | Path, seed: int = 0) -> Path:
    """Write one tiny random Qwen2.5-Omni checkpoint in the layout of the ACE-Step repos into
    `folder` (created) and return it. The same seed gives the same weights."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ids = _write_tokenizer(folder)
    config = _config(ids)
    _write_json(folder / "config.json", config)
    _write_json(folder / "generation_config.json", {
        "_from_model_config": True, "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "transformers_version": "4.53.3",
    })
    _write_json(folder / "preprocessor_config.json", PREPROCESSOR_CONFIG)
    _write_json(folder / "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    _write_weights(folder, config, seed)
    return folder


def write_tiny_omni_checkpoints(checkpoints_dir: str | Path) -> dict[str, Path]:
    """Tiny captioner and transcriber under `checkpoints_dir/acestep-captioner` and
    `checkpoints_dir/acestep-transcriber` (the folders `hf download ... --local-dir` makes);
    they differ in their random weights. Returns {"captioner": path, "transcriber": path}."""
    root = Path(checkpoints_dir)
    return {
        "captioner": write_tiny_omni(root / CAPTIONER_FOLDER, seed=0),
        "transcriber": write_tiny_omni(root / TRANSCRIBER_FOLDER, seed=1),
    }


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, the alphabet of byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def _write_tokenizer(folder: Path) -> dict[str, int]:
    """A byte-level BPE tokenizer (256 byte tokens, no merges) with Qwen2's normalizer and
    pre-tokenizer and the Qwen2.5-Omni special tokens; returns {special token: id}."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    alphabet = _bytes_to_unicode()
    vocab = {alphabet[byte]: index for index, byte in enumerate(range(256))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])
    tokenizer.save(str(folder / "tokenizer.json"))
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    _write_json(folder / "vocab.json", vocab)
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    _write_json(folder / "added_tokens.json", ids)
    extra = list(SPECIAL_TOKENS[1:])
    _write_json(folder / "special_tokens_map.json", {
        "additional_special_tokens": extra, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
    })
    _write_json(folder / "tokenizer_config.json", {
        "add_bos_token": False, "add_prefix_space": False,
        "added_tokens_decoder": {str(ids[token]): {
            "content": token, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True} for token in SPECIAL_TOKENS},
        "additional_special_tokens": extra, "bos_token": None, "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>", "errors": "replace", "model_max_length": 32768, "pad_token": "<|endoftext|>",
        "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    })
    return ids


def _config(ids: dict[str, int]) -> dict:
    vocab_size = len(_bytes_to_unicode()) + len(SPECIAL_TOKENS) + EXTRA_EMBEDDING_ROWS
    token_ids = {
        "audio_token_index": ids["<|AUDIO|>"], "image_token_index": ids["<|IMAGE|>"],
        "video_token_index": ids["<|VIDEO|>"], "audio_start_token_id": ids["<|audio_bos|>"],
        "audio_end_token_id": ids["<|audio_eos|>"], "vision_start_token_id": ids["<|vision_bos|>"],
        "vision_end_token_id": ids["<|vision_eos|>"],
    }
    thinker = {
        "model_type": "qwen2_5_omni_thinker", "architectures": ["Qwen2OmniNaViTThinkerForConditionalGeneration"],
        **token_ids, "vision_token_id": ids["<|vision_pad|>"], "bos_token_id": ids["<|im_start|>"],
        "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"], "user_token_id": 85,
        "position_id_per_seconds": 25, "seconds_per_chunk": 2, "ignore_index": -100, "init_std": 0.02,
        "torch_dtype": "bfloat16",
        "audio_config": {
            "model_type": "qwen2_5_omni_audio_encoder", "num_mel_bins": 128, "encoder_layers": 2,
            "encoder_attention_heads": 2, "encoder_ffn_dim": 32, "d_model": 16, "max_source_positions": 1500,
            "n_window": 100, "output_dim": 32, "activation_function": "gelu", "dropout": 0.0,
            "attention_dropout": 0.0, "activation_dropout": 0.0, "scale_embedding": False, "init_std": 0.02,
            "torch_dtype": "bfloat16",
        },
        "text_config": {
            "model_type": "qwen2_5_omni_text", "vocab_size": vocab_size, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "hidden_act": "silu",
            "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
            "rope_scaling": {"mrope_section": [2, 3, 3], "rope_type": "default", "type": "default"},
            "use_sliding_window": False, "sliding_window": 32768, "max_window_layers": 2,
            "tie_word_embeddings": False, "attention_dropout": 0.0, "init_std": 0.02, "torch_dtype": "bfloat16",
            "use_cache": True,
        },
        "vision_config": {
            "model_type": "qwen2_5_omni_vision_encoder", "depth": 1, "hidden_size": 16, "intermediate_size": 32,
            "num_heads": 2, "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
            "window_size": 112, "out_hidden_size": 32, "fullatt_block_indexes": [0], "hidden_act": "silu",
            "init_std": 0.02, "tokens_per_second": 25, "torch_dtype": "bfloat16",
        },
    }
    text_rows = vocab_size - EXTRA_EMBEDDING_ROWS
    talker = {
        "model_type": "qwen2_5_omni_talker", "architectures": ["Qwen2OmniTalkerForConditionalGeneration"],
        **token_ids, "vocab_size": 288, "tts_codec_pad_token_id": 280, "tts_codec_start_token_id": 281,
        "tts_codec_end_token_id": 282, "tts_codec_mask_token_id": 283, "tts_text_pad_token_id": text_rows + 3,
        "tts_text_start_token_id": text_rows + 4, "tts_text_end_token_id": text_rows + 5, "embedding_size": 32,
        "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1, "head_dim": 8, "hidden_act": "silu", "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
        "use_sliding_window": False, "sliding_window": 32768, "max_window_layers": 1, "position_id_per_seconds": 25,
        "seconds_per_chunk": 2, "spatial_merge_size": 2, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    }
    return {
        "architectures": ["Qwen2_5OmniModel"], "model_type": "qwen2_5_omni", "enable_audio_output": False,
        "thinker_config": thinker, "talker_config": talker, "torch_dtype": "bfloat16", "transformers_version": "4.52.3",
    }


def _sub_config(config: dict, exclude: tuple[str, ...] = ("model_type", "architectures")) -> dict:
    return {key: value for key, value in config.items() if key not in exclude}


def _original_name(name: str) -> str:
    """A transformers 5 thinker parameter name -> its name in the released checkpoints."""
    if name.startswith("model.language_model."):
        return "thinker.model." + name[len("model.language_model."):]
    if name.startswith("model."):
        return "thinker." + name[len("model."):]
    return "thinker." + name


def _write_weights(folder: Path, config: dict, seed: int) -> None:
    """Random thinker and talker weights in bf16, two shards and an index, as the real repos."""
    from transformers import (Qwen2_5OmniTalkerConfig, Qwen2_5OmniThinkerConfig,
                              Qwen2_5OmniThinkerForConditionalGeneration)
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniTalkerForConditionalGeneration

    torch.manual_seed(seed)
    thinker_config = Qwen2_5OmniThinkerConfig(**_sub_config(config["thinker_config"]))
    thinker = Qwen2_5OmniThinkerForConditionalGeneration(thinker_config)
    talker = Qwen2_5OmniTalkerForConditionalGeneration(Qwen2_5OmniTalkerConfig(**_sub_config(config["talker_config"])))
    tensors = {_original_name(name): value for name, value in thinker.state_dict().items()}
    tensors.update({f"talker.{name}": value for name, value in talker.state_dict().items()})
    tensors = {name: value.detach().to(torch.bfloat16).contiguous() for name, value in sorted(tensors.items())}
    tower_prefixes = ("thinker.audio_tower.", "thinker.visual.")
    towers = {name: value for name, value in tensors.items() if name.startswith(tower_prefixes)}
    shards = [towers, {name: value for name, value in tensors.items() if name not in towers}]
    weight_map = {}
    for number, shard in enumerate(shards, start=1):
        file_name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / file_name), metadata={"format": "pt"})
        weight_map.update({name: file_name for name in shard})
    total = sum(value.numel() * value.element_size() for value in tensors.values())
    _write_json(folder / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
