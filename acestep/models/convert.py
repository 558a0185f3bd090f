"""Key maps between the official ACE-Step 1.5 checkpoint layout and diffusers' module names.

The official `model.safetensors` holds one state dict with the prefixes `decoder.`, `encoder.`,
`tokenizer.`, `detokenizer.` and the bare `null_condition_emb`. diffusers splits it into four
modules and renames the attention submodules (`q_proj` -> `to_q`, `o_proj` -> `to_out.0`, ...).
diffusers' `from_pretrained` does not remap those names (it warns and leaves the attention weights
random), so every load goes through the strict map below; see
`shared/reference/diffusers-parity.md` section 3 for the table it implements.

The same renames serve LoRA adapters: official PEFT adapters name modules the upstream way
(`layers.3.self_attn.q_proj`), the diffusers transformer the diffusers way (`layers.3.self_attn.to_q`).
"""

from __future__ import annotations

import re

TRANSFORMER = "transformer"
CONDITION_ENCODER = "condition_encoder"
AUDIO_TOKENIZER = "audio_tokenizer"
AUDIO_DETOKENIZER = "audio_detokenizer"
COMPONENTS = (TRANSFORMER, CONDITION_ENCODER, AUDIO_TOKENIZER, AUDIO_DETOKENIZER)

# Official prefix -> our component name (the null embedding is routed on its own).
_PREFIX_TO_COMPONENT = {
    "decoder.": TRANSFORMER,
    "encoder.": CONDITION_ENCODER,
    "tokenizer.": AUDIO_TOKENIZER,
    "detokenizer.": AUDIO_DETOKENIZER,
}
_COMPONENT_TO_PREFIX = {component: prefix for prefix, component in _PREFIX_TO_COMPONENT.items()}
NULL_CONDITION_KEY = "null_condition_emb"

# Attention submodule names: official -> diffusers.
ATTENTION_RENAMES = {
    "q_proj": "to_q",
    "k_proj": "to_k",
    "v_proj": "to_v",
    "o_proj": "to_out.0",
    "q_norm": "norm_q",
    "k_norm": "norm_k",
}
_ORIGINAL_ATTN = re.compile(r"(?<![^.])(q_proj|k_proj|v_proj|o_proj|q_norm|k_norm)(?![^.])")
_DIFFUSERS_ATTN = re.compile(r"(?<![^.])(to_q|to_k|to_v|to_out\.0|norm_q|norm_k)(?![^.])")
_REVERSE_RENAMES = {new: old for old, new in ATTENTION_RENAMES.items()}

# Decoder patch layers: the official Sequential index `.1.` becomes a named conv.
_DECODER_RENAMES = {"proj_in.1.": "proj_in_conv.", "proj_out.1.": "proj_out_conv."}


class UnknownKeyError(KeyError):
    """A checkpoint key that belongs to no ACE-Step component."""


def rename_module_path_to_diffusers(path: str) -> str:
    """`layers.0.self_attn.q_proj` -> `layers.0.self_attn.to_q` (other segments unchanged)."""
    return _ORIGINAL_ATTN.sub(lambda m: ATTENTION_RENAMES[m.group(1)], path)


def rename_module_path_to_original(path: str) -> str:
    """`layers.0.self_attn.to_out.0` -> `layers.0.self_attn.o_proj` (the inverse of the above)."""
    return _DIFFUSERS_ATTN.sub(lambda m: _REVERSE_RENAMES[m.group(1)], path)


def original_key_to_diffusers(key: str) -> tuple[str, str]:
    """Map one official checkpoint key to `(component, diffusers_key)`.

    Raises `UnknownKeyError` for a key outside the four components and the null embedding.
    """
    if key == NULL_CONDITION_KEY:
        return CONDITION_ENCODER, NULL_CONDITION_KEY
    for prefix, component in _PREFIX_TO_COMPONENT.items():
        if key.startswith(prefix):
            inner = key[len(prefix):]
            if component == TRANSFORMER:
                for old, new in _DECODER_RENAMES.items():
                    if inner.startswith(old):
                        inner = new + inner[len(old):]
            return component, rename_module_path_to_diffusers(inner)
    raise UnknownKeyError(key)


def diffusers_key_to_original(component: str, key: str) -> str:
    """Map a diffusers module key back to the official checkpoint key."""
    if component == CONDITION_ENCODER and key == NULL_CONDITION_KEY:
        return NULL_CONDITION_KEY
    if component not in _COMPONENT_TO_PREFIX:
        raise ValueError(f"unknown component {component!r}; expected one of {COMPONENTS}")
    inner = rename_module_path_to_original(key)
    if component == TRANSFORMER:
        for old, new in _DECODER_RENAMES.items():
            if inner.startswith(new):
                inner = old + inner[len(new):]
    return _COMPONENT_TO_PREFIX[component] + inner
