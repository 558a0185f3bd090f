"""Adapter strength (`acestep/inference/strength.py`): 0 is the base model bit for bit, other
strengths scale, and afterwards every flag, scale and multiplier is exactly as before."""

import pytest
import torch

from acestep.inference.sampler import PreviewError
from acestep.inference.strength import adapter_strength, lycoris_wrapped, peft_layers

from .conftest import adapted, load_transformer


def inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {"hidden_states": torch.randn(1, 24, 64, generator=generator), "timestep": torch.tensor([0.6]),
            "timestep_r": torch.tensor([0.6]), "encoder_hidden_states": torch.randn(1, 8, 64, generator=generator),
            "context_latents": torch.randn(1, 24, 128, generator=generator)}


@torch.no_grad()
def forward(transformer, **kwargs):
    return transformer(**inputs(), **kwargs).sample


def adapter_state(transformer) -> dict:
    """Everything a strength change may touch, as plain values."""
    state = {"params": {n: (p.detach().clone(), p.requires_grad) for n, p in transformer.named_parameters()},
             "modes": [m.training for m in transformer.modules()]}
    for i, layer in enumerate(peft_layers(transformer)):
        state[f"peft{i}"] = (dict(layer.scaling), layer.disable_adapters, list(layer.active_adapters),
                             layer.cast_input_dtype_enabled)
    for i, module in enumerate(lycoris_wrapped(transformer)):
        state[f"lycoris{i}"] = (module.__dict__["forward"], [w.multiplier for w in module._lycoris_wrappers])
    return state


def assert_same_state(before, after):
    assert before.keys() == after.keys()
    for key in before:
        if key == "params":
            assert before[key].keys() == after[key].keys()
            for name, (tensor, grad) in before[key].items():
                assert torch.equal(tensor, after[key][name][0]) and grad == after[key][name][1], name
        else:
            assert before[key] == after[key], key


@pytest.mark.parametrize("kind", ["lora", "dora", "lokr"])
def test_strength_zero_is_the_base_model_and_others_scale(turbo_dit, kind):
    base = forward(load_transformer(turbo_dit).eval())
    transformer, _ = adapted(turbo_dit, kind)
    transformer.train()  # as in training: modes and grads must come back
    before = adapter_state(transformer)
    full = forward(transformer.eval())
    transformer.train()
    with adapter_strength(transformer, 0.0):
        off = forward(transformer)
    with adapter_strength(transformer, 0.5):
        half = forward(transformer)
    with adapter_strength(transformer, 1.0):
        one = forward(transformer)
    assert torch.equal(off, base)  # exactly off, DoRA's magnitude and LoKr included
    assert (full - base).abs().max() > 1e-2
    assert torch.equal(one, forward(transformer))
    assert (half - base).abs().max() > 1e-3 and (half - full).abs().max() > 1e-3
    assert_same_state(before, adapter_state(transformer))


def test_state_is_restored_when_the_block_raises(turbo_lora):
    transformer, _ = turbo_lora
    before = adapter_state(transformer)
    with pytest.raises(RuntimeError, match="boom"):
        with adapter_strength(transformer, 0.0):
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        with adapter_strength(transformer, 0.3):
            raise RuntimeError("boom")
    assert_same_state(before, adapter_state(transformer))


def test_an_odd_scale_comes_back_bit_exact(turbo_dit):
    # 0.75 * 0.1 / 0.1 != 0.75: undoing a scale by division (diffusers' unscale_lora_layers) drifts.
    transformer = load_transformer(turbo_dit)
    from acestep.training.adapters import add_adapter

    add_adapter(transformer, "lora", rank=4, alpha=3.0)
    layer = peft_layers(transformer)[0]
    assert layer.scaling["default"] == 0.75 and 0.75 * 0.1 / 0.1 != 0.75
    with adapter_strength(transformer, 0.1):
        assert layer.scaling["default"] == 0.75 * 0.1
    assert layer.scaling["default"] == 0.75


def test_strength_needs_an_adapter_and_a_sane_value(turbo_dit, turbo_lora):
    with pytest.raises(PreviewError, match="has no adapter"):
        with adapter_strength(load_transformer(turbo_dit), 0.5):
            pass
    with pytest.raises(PreviewError, match="0 or more"):
        with adapter_strength(turbo_lora[0], -1.0):
            pass



def test_a_training_adapter_samples_in_bf16_and_keeps_its_training_casts(turbo_dit):
    """Training under autocast skips PEFT's input cast (`Adapter.skip_input_casts`); a preview samples
    without autocast, bf16 base and fp32 adapter, so within the block the cast is on, and after it off."""
    from acestep.inference.sampler import sample_latents

    transformer, adapter = adapted(turbo_dit)
    transformer.to(torch.bfloat16)
    for param in adapter.parameters():
        param.data = param.data.float()  # adapters train in fp32 over a bf16 base
    adapter.skip_input_casts()
    transformer.eval()
    before = adapter_state(transformer)
    bf16 = {k: v.to(torch.bfloat16) for k, v in inputs().items()}
    with pytest.raises(RuntimeError, match="dtype"):  # what sampling would meet with the training flags
        transformer(**bf16)
    condition, context = torch.randn(1, 8, 64), torch.randn(1, 24, 128)
    latents = sample_latents(transformer, condition, None, context, 24, [1.0, 0.5], 1.0,
                             torch.Generator().manual_seed(0), strength=1.0)
    assert torch.isfinite(latents).all()
    assert_same_state(before, adapter_state(transformer))
    assert not any(layer.cast_input_dtype_enabled for layer in peft_layers(transformer))
