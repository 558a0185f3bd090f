"""Write a tiny random ACE-Step 5 Hz LM folder in the official layout, for tests and the offline demo.

    acestep-5Hz-lm-1.7B/   config.json (Qwen3ForCausalLM), model.safetensors, generation_config.json,
                           tokenizer.json, tokenizer_config.json (Qwen2Tokenizer), chat_template.jinja

Like the real LM it is a transformers `Qwen3ForCausalLM` whose tokenizer holds the chat tokens
(`<|im_start|>`, `<|im_end|>`, `<|endoftext|>`), `<think>`/`</think>` and the 64000 audio-code
tokens `<|audio_code_0|>` .. `<|audio_code_63999|>`, and whose chat template writes Qwen3's
`<|im_start|>role\\n...<|im_end|>` turns. Only the sizes are tiny (hidden 32, 2 layers) and the
weights random (seeded: the same seed writes the same files).
"""

from __future__ import annotations

from pathlib import Path

import torch

from acestep.captioning.lm_prompt import CODEBOOK_SIZE, THINK_END, THINK_START, audio_code_token
from acestep.errors import AceStepError
from acestep.files import replaced_folder

TINY_LM_NAME = "acestep-5Hz-lm-1.7B"
CHAT_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

TINY_LM_CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "max_position_embeddings": 8192,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,  # as the official LMs (their file sizes say so)
}

# Qwen3's chat template for plain system/user/assistant turns (no tools, no reasoning history).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_CORPUS = """
# Instruction
Understand the given musical conditions and describe the audio semantics accordingly:
<think>
bpm: 120
caption: An upbeat pop song with bright synths, punchy drums and a catchy female vocal.
duration: 180
genres: pop, dance, electronic
keyscale: A minor
language: en
timesignature: 4
</think>
# Lyric
[Verse 1] [Chorus] [Bridge] [Intro] [Outro] [Instrumental]
we sing together under the open sky until the morning comes
a warm jazz ballad with soft piano, upright bass and brushed drums
lo-fi hip hop beat, dusty vinyl crackle, mellow keys, relaxed groove
0 1 2 3 4 5 6 7 8 9 major minor # b C D E F G A B
"""


def _tokenizer():
    from tokenizers import AddedToken

    from acestep.models.tiny import train_byte_level_bpe
    from transformers import PreTrainedTokenizerFast

    bpe = train_byte_level_bpe(_CORPUS, 512, CHAT_TOKENS)
    # Not special, as in Qwen3: they appear in decoded text whatever skip_special_tokens says.
    bpe.add_tokens([AddedToken(text, normalized=False, special=False) for text in (THINK_START, THINK_END)])
    bpe.add_tokens([AddedToken(audio_code_token(code), normalized=False, special=False)
                    for code in range(CODEBOOK_SIZE)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        model_max_length=32768)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _seeded_random_(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Seeded noise in sorted-name order. The layers get a large scale so that, through the tied
    embeddings, greedy decoding does not just repeat the last token (as a near-identity net would)."""
    with torch.no_grad():
        for name, param in sorted(module.named_parameters()):
            noise = torch.randn(param.shape, generator=generator)
            if "norm" in name:
                param.copy_(1.0 + 0.1 * noise)
            else:
                scale = 0.5 if "embed_tokens" in name else 2.0
                param.copy_(noise * (scale / param.shape[-1] ** 0.5))


def _write(folder: Path, seed: int) -> None:
    import json

    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = _tokenizer()
    ids = tokenizer.convert_tokens_to_ids(CHAT_TOKENS)
    config = Qwen3Config(vocab_size=len(tokenizer), bos_token_id=ids[0], eos_token_id=ids[2], pad_token_id=ids[0],
                         **TINY_LM_CONFIG)
    model = Qwen3ForCausalLM(config)
    _seeded_random_(model, torch.Generator().manual_seed(seed))
    model.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)  # bf16, as the official weights
    tokenizer.save_pretrained(folder)
    settings = folder / "tokenizer_config.json"
    data = json.loads(settings.read_text(encoding="utf-8"))
    data["tokenizer_class"] = "Qwen2Tokenizer"  # what the official LM folders name
    settings.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def write_tiny_lm(out_dir: str | Path, name: str = TINY_LM_NAME, seed: int = 0, overwrite: bool = False) -> Path:
    """Write the tiny LM as `out_dir/name` (built beside it and moved into place, so an interrupted
    run leaves nothing half-written). Refuses an existing folder unless `overwrite`. Returns it."""
    out_dir = Path(out_dir).expanduser().resolve()
    target = out_dir / name
    if target.exists() and not overwrite:
        raise AceStepError(f"{target} already exists; choose an empty folder or pass overwrite=True.")
    with replaced_folder(target) as staging:
        _write(staging, seed)
    return target
