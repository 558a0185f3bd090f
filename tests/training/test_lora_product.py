"""LoRA's product added in one GEMM (`acestep/training/lora_product.py`): PEFT's result to bf16
rounding under autocast and no farther from the fp32 result, two kernels fewer per adapted layer in
the forward pass, and PEFT's own forward for every call it does not cover."""

import copy

import pytest
import torch
from peft.tuners.lora.layer import Linear as LoraLinear

from acestep.models import load_acestep
from acestep.training.adapters import add_adapter
from acestep.training.lora_product import FusedLoraLinear, fuse_lora_products
from models.test_layout import CountOps
from training.test_recompute import step, step_inputs


def adapted(fixture_dir, kind="lora", dtype=torch.bfloat16, **options):
    transformer = load_acestep(fixture_dir, dtype=dtype, components=("transformer",)).transformer
    adapter = add_adapter(transformer, kind, rank=4, alpha=8.0, **options)
    with torch.no_grad():
        for param in adapter.parameters():
            param.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(7))
    return transformer.train(), adapter


def counted_step(transformer, adapter):
    with CountOps() as ops:
        prediction, grads = step(transformer, adapter)
    return prediction.float(), grads, ops.counts


def test_under_autocast_the_fused_product_is_peft_s_to_rounding_and_no_farther_from_fp32(fixture_dir):
    transformer, adapter = adapted(fixture_dir, mlp=True)
    reference = copy.deepcopy(transformer).float()
    reference_adapter = [p for name, p in reference.named_parameters() if "lora_" in name]
    adapter.skip_input_casts()
    peft, peft_grads, peft_ops = counted_step(transformer, adapter)
    assert adapter.fuse_lora_products() == len(adapter.modules)
    fused, fused_grads, fused_ops = counted_step(transformer, adapter)
    torch.testing.assert_close(fused, peft, rtol=2e-2, atol=2e-2 * peft.abs().max().item())
    assert not torch.equal(fused, peft)  # one rounding where PEFT's three kernels round three times
    # the same step in fp32 (the copy made before the fusion: PEFT's forward, no autocast) as the
    # reference for both
    torch.manual_seed(0)
    exact = reference(**step_inputs(reference)).sample
    exact.pow(2).mean().backward()
    exact_grads = [p.grad for p in reference_adapter]

    def error(grads):
        return sum(((g.float() - e).norm() / e.norm()).item() for g, e in zip(grads, exact_grads, strict=True))

    assert error(fused_grads) <= 1.05 * error(peft_grads)
    layers = len(adapter.modules)  # per adapted layer: mm, mul and add become one addmm in the forward pass
    assert fused_ops["addmm.default"] - peft_ops["addmm.default"] == layers
    assert peft_ops["add.Tensor"] - fused_ops["add.Tensor"] >= layers
    assert peft_ops["mul.Tensor"] - fused_ops["mul.Tensor"] >= 2 * layers  # the scaling, forward and backward


def test_calls_the_fused_product_does_not_cover_run_peft_s_forward_bit_for_bit(fixture_dir, monkeypatch):
    transformer, adapter = adapted(fixture_dir, dropout=0.0)
    layer = next(m for m in transformer.modules() if type(m) is LoraLinear)
    plain = copy.deepcopy(layer)
    fuse_lora_products(transformer)
    assert type(layer) is FusedLoraLinear and sorted(layer.state_dict()) == sorted(plain.state_dict())
    x = torch.randn(2, 5, layer.in_features, dtype=torch.bfloat16)
    # the input cast on (no skip_input_casts: previews, fp32 runs), in the weights' own dtypes
    assert torch.equal(layer(x), plain(x))
    for switch in ("disable", "merge"):
        fused, reference = copy.deepcopy(layer), copy.deepcopy(plain)
        for module in (fused, reference):
            module.cast_input_dtype_enabled = False
            if switch == "disable":
                module.enable_adapters(False)
            else:
                module.merge()
        assert torch.equal(fused(x), reference(x)), switch
    # the cast off but bf16 input, fp32 adapter and no autocast: PEFT's forward is called (and fails
    # as PEFT fails there), not an addmm of mixed dtypes
    calls, original = [], LoraLinear.forward

    def spy(self, *args, **kwargs):
        calls.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LoraLinear, "forward", spy)
    layer.cast_input_dtype_enabled = False
    with pytest.raises(RuntimeError, match="same dtype"):
        layer(x)
    assert calls == [layer]


def test_dora_keeps_peft_s_forward(fixture_dir):
    transformer, adapter = adapted(fixture_dir, kind="dora")
    adapter.skip_input_casts()
    before, before_grads, before_ops = counted_step(transformer, adapter)
    assert adapter.fuse_lora_products() == len(adapter.modules)  # the class is swapped, the forward is PEFT's
    after, after_grads, after_ops = counted_step(transformer, adapter)
    assert torch.equal(before, after) and all(torch.equal(a, b) for a, b in zip(before_grads, after_grads, strict=True))
    assert after_ops == before_ops


def test_fuse_lora_products_is_idempotent(fixture_dir):
    transformer, adapter = adapted(fixture_dir)
    assert [fuse_lora_products(transformer) for _ in range(2)] == [len(adapter.modules)] * 2
