"""The variant and the module sizes come from config.json fields, never from the folder name."""

import pytest

from acestep.errors import CheckpointError
from acestep.models.config import parse_model_config
from acestep.models.tiny import TINY_DIT_CONFIG


def config(**changes):
    raw = {**TINY_DIT_CONFIG, **changes}
    return parse_model_config({k: v for k, v in raw.items() if v is not None})


@pytest.mark.parametrize("changes, variant", [
    ({"is_turbo": True, "model_version": "turbo"}, "turbo"),
    # upstream's config class defaults model_version to "turbo": is_turbo decides.
    ({"is_turbo": False, "model_version": "turbo"}, "base"),
    ({"is_turbo": False, "model_version": "base"}, "base"),
    ({"is_turbo": False, "model_version": "sft"}, "sft"),
    ({"is_turbo": None, "model_version": "turbo"}, "turbo"),
    ({"is_turbo": True, "model_version": "xl_turbo", "encoder_hidden_size": 64, "hidden_size": 96}, "xl-turbo"),
    ({"is_turbo": False, "model_version": "xl_sft", "encoder_hidden_size": 64, "hidden_size": 96}, "xl-sft"),
    # XL by its sizes even when model_version says nothing about it.
    ({"is_turbo": False, "model_version": "base", "encoder_hidden_size": 64, "hidden_size": 96}, "xl-base"),
])
def test_variant_from_config_fields(changes, variant):
    assert config(**changes).variant == variant


def test_encoder_sizes_default_to_decoder_sizes_on_2b():
    cfg = config()
    assert not cfg.is_xl
    assert cfg.condition_encoder_kwargs()["hidden_size"] == cfg.hidden_size == 64
    assert cfg.transformer_kwargs()["encoder_hidden_size"] == 64


def test_xl_encoder_kwargs_use_encoder_sizes():
    cfg = config(hidden_size=96, encoder_hidden_size=64, encoder_intermediate_size=100,
                 encoder_num_attention_heads=2, encoder_num_key_value_heads=1)
    assert cfg.condition_encoder_kwargs()["hidden_size"] == 64
    assert cfg.condition_encoder_kwargs()["intermediate_size"] == 100
    assert cfg.audio_tokenizer_kwargs()["num_attention_heads"] == 2
    assert cfg.transformer_kwargs()["hidden_size"] == 96
    assert cfg.transformer_kwargs()["encoder_hidden_size"] == 64


def test_timestep_distribution_comes_from_config():
    assert (config().timestep_mu, config().timestep_sigma) == (-0.4, 1.0)
    assert config(timestep_mu=-0.2, timestep_sigma=0.8).timestep_mu == -0.2


def test_sliding_window_switch_off_makes_every_layer_full():
    assert config(use_sliding_window=False).layer_types == ["full_attention"] * 4
    assert config().layer_types[0] == "sliding_attention"


def test_fingerprint_follows_architecture_and_variant_only():
    assert config().fingerprint == config(transformers_version="9.9", dtype="float32").fingerprint
    assert config().fingerprint != config(is_turbo=False).fingerprint
    assert config().fingerprint != config(hidden_size=128).fingerprint


@pytest.mark.parametrize("changes, message", [
    ({"model_type": "qwen3"}, "model_type 'qwen3', not 'acestep'"),
    ({"hidden_size": None}, "lacks the field\\(s\\) hidden_size"),
    ({"in_channels": 128}, "in_channels is 128 but must be 3 x audio_acoustic_hidden_dim = 192"),
    ({"layer_types": ["sliding_attention"]}, "layer_types has 1 entries but num_hidden_layers is 4"),
    ({"layer_types": ["local"] * 4}, "unknown value"),
    ({"num_key_value_heads": 3}, "multiple of num_key_value_heads"),
])
def test_invalid_configs_are_refused_with_the_field(changes, message):
    with pytest.raises(CheckpointError, match=message):
        config(**changes)


def test_non_object_config_is_refused():
    with pytest.raises(CheckpointError, match="not a JSON object"):
        parse_model_config(["acestep"])
