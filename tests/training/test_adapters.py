"""Adapters attach where asked, train only themselves, and save in the official PEFT layout."""

import json

import pytest
import torch

from acestep.errors import TrainingError
from acestep.export import load_adapter
from acestep.models import load_acestep
from acestep.training.adapters import add_adapter, save_adapter, target_module_names


@pytest.fixture
def transformer(fixture_dir):
    return load_acestep(fixture_dir, dtype=torch.float32, components=("transformer",)).transformer


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"hidden_states": torch.randn(2, 13, 64, generator=g), "timestep": torch.tensor([0.7, 0.2]),
            "timestep_r": torch.tensor([0.7, 0.2]), "encoder_hidden_states": torch.randn(2, 9, 64, generator=g),
            "context_latents": torch.randn(2, 13, 128, generator=g)}


@pytest.mark.parametrize("targets, mlp, count", [("attention", False, 32), ("self_attention", False, 16),
                                                 ("cross_attention", True, 28), ("attention", True, 44)])
def test_target_selection(transformer, targets, mlp, count):
    names = target_module_names(transformer, targets, mlp)
    assert len(names) == count
    if targets == "self_attention":
        assert all(".self_attn." in n for n in names)


def test_explicit_modules_accept_official_names(transformer):
    assert target_module_names(transformer, modules=["layers.0.self_attn.q_proj", "o_proj"]) == [
        "layers.0.self_attn.to_q", "layers.0.self_attn.to_out.0", "layers.0.cross_attn.to_out.0",
        "layers.1.self_attn.to_out.0", "layers.1.cross_attn.to_out.0", "layers.2.self_attn.to_out.0",
        "layers.2.cross_attn.to_out.0", "layers.3.self_attn.to_out.0", "layers.3.cross_attn.to_out.0"]
    with pytest.raises(TrainingError, match="No module"):
        target_module_names(transformer, modules=["nothing_like_this"])


@pytest.mark.parametrize("kind", ["lora", "dora", "lokr"])
def test_only_adapter_weights_train_and_they_are_fp32(fixture_dir, kind):
    transformer = load_acestep(fixture_dir, dtype=torch.bfloat16, components=("transformer",)).transformer
    adapter = add_adapter(transformer, kind, rank=4, alpha=8, targets="attention")
    trainable = adapter.parameters()
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert all(not p.requires_grad for n, p in transformer.named_parameters() if "lora_" not in n)
    assert {p.dtype for n, p in transformer.named_parameters() if "lora_" not in n} == {torch.bfloat16}


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_saved_peft_folder_uses_official_names_and_reloads_identically(fixture_dir, tmp_path, kind):
    transformer = load_acestep(fixture_dir, dtype=torch.float32, components=("transformer",)).transformer
    adapter = add_adapter(transformer, kind, rank=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    transformer.eval()
    expected = transformer(**inputs()).sample
    save_adapter(adapter, tmp_path / "adapter", {"trigger_tag": "mystyle"})
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["use_dora"] == (kind == "dora")
    assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]  # as the official trainer
    from safetensors import safe_open
    with safe_open(tmp_path / "adapter" / "adapter_model.safetensors", "pt") as handle:
        keys = list(handle.keys())
    assert "base_model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert not any(".default" in k or "to_q" in k for k in keys)
    fresh = load_acestep(fixture_dir, dtype=torch.float32, components=("transformer",)).transformer
    load_adapter(fresh, tmp_path / "adapter")
    assert (fresh(**inputs()).sample - expected).abs().max() < 1e-5


def test_adapter_state_dict_round_trip(transformer):
    adapter = add_adapter(transformer, "lokr", rank=4, alpha=4)
    state = {k: v.clone() + 1 for k, v in adapter.state_dict().items()}
    adapter.load_state_dict(state)
    assert all(torch.equal(adapter.state_dict()[k], v) for k, v in state.items())
    with pytest.raises(TrainingError, match="does not match"):
        adapter.load_state_dict({"unknown": torch.zeros(1)})


def test_lokr_saves_native_weights_that_reload(fixture_dir, tmp_path):
    from acestep.training.adapters import load_lokr_weights

    transformer = load_acestep(fixture_dir, dtype=torch.float32, components=("transformer",)).transformer
    adapter = add_adapter(transformer, "lokr", rank=4, alpha=4)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    expected = transformer(**inputs()).sample
    save_adapter(adapter, tmp_path / "lokr")
    assert (tmp_path / "lokr" / "lokr_weights.safetensors").is_file()
    fresh_model = load_acestep(fixture_dir, dtype=torch.float32, components=("transformer",)).transformer
    fresh = add_adapter(fresh_model, "lokr", rank=4, alpha=4)
    assert (fresh_model(**inputs()).sample - expected).abs().max() > 1e-4
    load_lokr_weights(fresh, tmp_path / "lokr")
    assert (fresh_model(**inputs()).sample - expected).abs().max() < 1e-5


@pytest.mark.parametrize("options, targets", [
    ({"targets": "self_attention"}, ["self_attn.k_proj", "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj"]),
    ({"targets": "attention", "mlp": True}, ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                             "v_proj"]),
    ({"modules": ["layers.0.self_attn.q_proj"]}, ["layers.0.self_attn.q_proj"]),
])
def test_official_target_modules_are_the_shortest_exact_selection(transformer, tmp_path, options, targets):
    adapter = add_adapter(transformer, "lora", rank=4, alpha=8, **options)
    save_adapter(adapter, tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["target_modules"] == targets


def autocast_step(transformer, adapter):
    """A training forward + backward in bf16 under CPU autocast; (prediction, adapter grads, casts)."""
    from models.test_layout import CountOps
    from training.test_recompute import step

    with CountOps() as ops:
        prediction, grads = step(transformer, adapter)
    return prediction, grads, ops.counts["_to_copy.default"]


def test_skipping_peft_s_input_cast_under_autocast_keeps_lora_s_bits_and_drops_two_copies_a_layer(fixture_dir):
    transformer = load_acestep(fixture_dir, dtype=torch.bfloat16, components=("transformer",)).transformer
    adapter = add_adapter(transformer, "lora", rank=4, alpha=8.0, dropout=0.0, mlp=True)
    with torch.no_grad():
        for param in adapter.parameters():
            param.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(7))
    transformer.train()
    cast, cast_grads, cast_copies = autocast_step(transformer, adapter)
    adapter.skip_input_casts()
    plain, plain_grads, plain_copies = autocast_step(transformer, adapter)
    assert torch.equal(plain, cast)  # bf16 -> fp32 -> bf16 is exact
    assert all(torch.equal(a, b) for a, b in zip(plain_grads, cast_grads, strict=True))
    # each adapted layer: the cast to fp32 and autocast's cast back in the forward pass (and their
    # gradients in the backward pass where the input needs one)
    assert cast_copies - plain_copies >= 2 * len(adapter.modules) + 2 * len(adapter.modules) // 2


@pytest.mark.parametrize("dropout, warned", [(0.1, 1), (0.0, 0)])
def test_a_lokr_run_with_dropout_says_once_that_lokr_trains_without_it(tmp_path, tiny_dit, capfd, dropout, warned):
    """LyCORIS applies no dropout when it rebuilds LoKr weights (as the trainer runs it), and printed
    a warning per module about it; the run says it once, as a warning event."""
    from acestep.training.loop import train

    from .conftest import write_tensors_dir
    from .test_loop import events, make_config

    tensors = write_tensors_dir(tmp_path / "tensors", tiny_dit, 2)
    result = train(make_config(tmp_path, tensors, tiny_dit, "adapter.type=lokr", f"adapter.dropout={dropout}",
                               "run.max_steps=1", "optimizer.warmup_steps=0"))
    messages = [e["message"] for e in events(result.run_dir) if e["type"] == "warning"]
    assert len(messages) == warned and all("has no effect on LoKr" in m for m in messages)
    assert "haven't implemented normal dropout" not in capfd.readouterr().out


def test_lycoris_lokr_applies_no_dropout_when_it_rebuilds_the_weight():
    """The fact behind the warning above: with dropout 0.5 and weights set, two forward passes in
    training mode give the same output (LyCORIS rebuilds the weight and never calls its dropout)."""
    from lycoris.modules.lokr import LokrModule

    base = torch.nn.Linear(16, 16)
    module = LokrModule("t", base, multiplier=1.0, lora_dim=4, alpha=4, dropout=0.5, factor=4)
    assert not module.bypass_mode
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(0))
    module.apply_to()
    x = torch.randn(8, 16)
    module.train()
    first, second = base(x), base(x)
    assert torch.equal(first, second) and not torch.equal(first, torch.nn.functional.linear(x, base.weight, base.bias))


@pytest.mark.parametrize("kind", ["lora", "dora", "lokr"])
def test_a_saved_adapter_loads_back_bit_for_bit_and_another_shape_is_refused(fixture_dir, tmp_path, kind):
    from acestep.training.adapters import load_saved_adapter

    def fresh(rank):
        model = load_acestep(fixture_dir, dtype=torch.float32, components=("transformer",)).transformer
        return add_adapter(model, kind, rank=rank, alpha=4)

    adapter = fresh(4)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_adapter(adapter, tmp_path / "saved")
    loaded = fresh(4)
    load_saved_adapter(loaded, tmp_path / "saved")
    expected, got = adapter.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    with pytest.raises(TrainingError, match=r"saved/\w+\.safetensors does not match the (LoKr )?adapter"):
        load_saved_adapter(fresh(2), tmp_path / "saved")
    with pytest.raises(TrainingError, match=r"missing/\w+\.safetensors cannot be read"):
        load_saved_adapter(loaded, tmp_path / "missing")
