"""Official PEFT adapters apply to the diffusers transformer with their alpha/r scale."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from acestep.export import AdapterError, load_adapter
from acestep.models import load_acestep


@pytest.fixture
def transformer(fixture_dir):
    return load_acestep(fixture_dir, dtype=torch.float32, components=("transformer",)).transformer


@pytest.fixture
def lora_copy(fixture_dir, tmp_path):
    folder = tmp_path / "lora"
    shutil.copytree(fixture_dir / "lora", folder)
    return folder


def velocity(transformer, ref):
    with torch.no_grad():
        return transformer(hidden_states=ref["decoder.in.hidden_states"], timestep=ref["decoder.in.timestep"],
                           timestep_r=ref["decoder.in.timestep_r"],
                           encoder_hidden_states=ref["decoder.in.encoder_hidden_states"],
                           context_latents=ref["decoder.in.context_latents"]).sample


def test_upstream_lora_reproduces_reference_output(transformer, fixture_dir, reference):
    load_adapter(transformer, fixture_dir / "lora")
    assert (velocity(transformer, reference) - reference["lora.out.velocity"]).abs().max() < 1e-5
    adapted = [name for name, _ in transformer.named_modules() if name.endswith(".lora_A")]
    assert len(adapted) == 32  # 4 layers x self/cross x q, k, v, o
    assert not transformer.training  # the adapter's dropout layers follow the model's eval mode


def test_default_infix_keys_load_the_same(transformer, lora_copy, reference):
    state = load_file(lora_copy / "adapter_model.safetensors")
    save_file({k.replace(".weight", ".default.weight"): v for k, v in state.items()},
              lora_copy / "adapter_model.safetensors")
    load_adapter(transformer, lora_copy)
    assert (velocity(transformer, reference) - reference["lora.out.velocity"]).abs().max() < 1e-5


def test_alpha_sets_the_scale(fixture_dir, lora_copy, reference):
    # With alpha = r (scale 1.0) the update is half of the alpha 8 / r 4 = 2.0 reference update.
    config = json.loads((lora_copy / "adapter_config.json").read_text())
    config["lora_alpha"] = 4
    (lora_copy / "adapter_config.json").write_text(json.dumps(config))
    transformer = load_acestep(fixture_dir, dtype=torch.float32, components=("transformer",)).transformer
    base = velocity(transformer, reference)
    load_adapter(transformer, lora_copy)
    half = velocity(transformer, reference)
    full = reference["lora.out.velocity"]
    assert (half - full).abs().max() > 1e-2  # scale 1.0 is not what upstream applies
    # LoRA is linear in its scale only at first order; check the direction, not equality.
    assert torch.nn.functional.cosine_similarity((half - base).flatten(), (full - base).flatten(), dim=0) > 0.9


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(peft_type="LOKR"), "describes a 'LOKR' adapter"),
    (lambda c: c.update(r=0), "field 'r' must be a positive number"),
    (lambda c: c.update(bias="all"), "bias 'all' is not supported"),
])
def test_bad_adapter_config_is_named(transformer, lora_copy, edit, message):
    config = json.loads((lora_copy / "adapter_config.json").read_text())
    edit(config)
    (lora_copy / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match=message):
        load_adapter(transformer, lora_copy)


def test_adapter_for_modules_the_model_lacks_is_refused(transformer, lora_copy):
    state = load_file(lora_copy / "adapter_model.safetensors")
    state = {k.replace("layers.3.", "layers.30."): v for k, v in state.items()}
    save_file(state, lora_copy / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match=r"adapts module\(s\) the model does not have: \['layers\.30\."):
        load_adapter(transformer, lora_copy)


def test_adapter_of_wrong_rank_shape_is_refused(transformer, lora_copy):
    state = load_file(lora_copy / "adapter_model.safetensors")
    key = "base_model.model.layers.0.self_attn.q_proj.lora_A.weight"
    state[key] = torch.zeros(4, 10)
    save_file(state, lora_copy / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match="does not fit the model"):
        load_adapter(transformer, lora_copy)


def test_folder_without_adapter_is_named(transformer, tmp_path):
    with pytest.raises(AdapterError, match="has no adapter_config.json: it is not a PEFT adapter folder"):
        load_adapter(transformer, tmp_path)
