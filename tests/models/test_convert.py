"""The official <-> diffusers key map is a bijection over a real checkpoint's keys."""

import pytest
from safetensors import safe_open

from acestep.models import convert


def test_every_fixture_key_maps_and_maps_back(fixture_dir):
    with safe_open(fixture_dir / "model.safetensors", "pt") as handle:
        keys = list(handle.keys())
    assert len(keys) == 187
    mapped = [convert.original_key_to_diffusers(k) for k in keys]
    assert len(set(mapped)) == len(keys)
    for original, (component, new) in zip(keys, mapped, strict=True):
        assert convert.diffusers_key_to_original(component, new) == original
    counts = {c: sum(1 for m in mapped if m[0] == c) for c in convert.COMPONENTS}
    assert counts == {"transformer": 96, "condition_encoder": 53, "audio_tokenizer": 21, "audio_detokenizer": 17}


@pytest.mark.parametrize("original, expected", [
    ("decoder.layers.3.self_attn.q_proj.weight", ("transformer", "layers.3.self_attn.to_q.weight")),
    ("decoder.layers.3.cross_attn.o_proj.weight", ("transformer", "layers.3.cross_attn.to_out.0.weight")),
    ("decoder.layers.3.cross_attn.k_norm.weight", ("transformer", "layers.3.cross_attn.norm_k.weight")),
    ("decoder.layers.3.mlp.gate_proj.weight", ("transformer", "layers.3.mlp.gate_proj.weight")),
    ("decoder.proj_in.1.weight", ("transformer", "proj_in_conv.weight")),
    ("decoder.proj_out.1.bias", ("transformer", "proj_out_conv.bias")),
    ("encoder.lyric_encoder.layers.0.self_attn.v_proj.weight",
     ("condition_encoder", "lyric_encoder.layers.0.self_attn.to_v.weight")),
    ("null_condition_emb", ("condition_encoder", "null_condition_emb")),
    ("tokenizer.attention_pooler.special_token", ("audio_tokenizer", "attention_pooler.special_token")),
    ("detokenizer.layers.0.self_attn.q_norm.weight", ("audio_detokenizer", "layers.0.self_attn.norm_q.weight")),
])
def test_key_examples(original, expected):
    assert convert.original_key_to_diffusers(original) == expected


def test_unknown_prefix_raises():
    with pytest.raises(convert.UnknownKeyError):
        convert.original_key_to_diffusers("lm_head.weight")


def test_module_path_renames_only_whole_segments():
    assert convert.rename_module_path_to_diffusers("layers.0.self_attn.o_proj") == "layers.0.self_attn.to_out.0"
    assert convert.rename_module_path_to_diffusers("my_q_proj_extra.x") == "my_q_proj_extra.x"
    assert convert.rename_module_path_to_original("layers.0.cross_attn.to_out.0") == "layers.0.cross_attn.o_proj"
