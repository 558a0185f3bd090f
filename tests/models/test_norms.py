"""The RMSNorms on PyTorch's fused kernel (`acestep/models/norms.py`): diffusers' result in fp32 bit
for bit, in bf16 to one rounding and nearer the exact value, the same output dtype everywhere,
autocast kept out of the call, one graph under torch.compile."""

import copy

import pytest
import torch
from diffusers.models.normalization import RMSNorm

from acestep.models.load import ALL_COMPONENTS, build_component, load_acestep
from acestep.models.norms import FusedRMSNorm, use_fused_rms_norm


def norm_pair(dtype: torch.dtype, width: int = 64) -> tuple[RMSNorm, FusedRMSNorm]:
    torch.manual_seed(0)
    plain = RMSNorm(width, eps=1e-6)
    with torch.no_grad():
        plain.weight.copy_(torch.randn(width) * 0.3 + 1.0)
    plain = plain.to(dtype)
    fused = use_fused_rms_norm(copy.deepcopy(plain))
    assert type(fused) is FusedRMSNorm
    return plain, fused


def forward_backward(norm: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor):
    x = x.detach().clone().requires_grad_()
    out = norm(x)
    out.backward(grad)
    return out.detach(), x.grad


def test_the_loader_puts_every_rms_norm_of_every_component_on_the_fused_kernel(tiny_checkpoints):
    bundle = load_acestep(tiny_checkpoints / "acestep-v15-turbo", dtype=torch.float32)
    for name in ALL_COMPONENTS:
        module = getattr(bundle, name)
        norms = [m for m in module.modules() if isinstance(m, RMSNorm)]
        assert norms and all(type(m) is FusedRMSNorm for m in norms), name
    built = build_component(bundle.config, "transformer")
    assert sorted(built.state_dict()) == sorted(bundle.transformer.state_dict())  # same parameters and keys


def test_in_fp32_output_and_gradient_are_diffusers_bit_for_bit():
    plain, fused = norm_pair(torch.float32)
    x, grad = torch.randn(3, 40, 64) * 3, torch.randn(3, 40, 64)
    for a, b in zip(forward_backward(plain, x, grad), forward_backward(fused, x, grad), strict=True):
        assert torch.equal(a, b)


def test_in_bf16_the_fused_norm_rounds_once_and_is_nearer_the_exact_value():
    plain, fused = norm_pair(torch.bfloat16)
    x = (torch.randn(4, 50, 64) * 3).to(torch.bfloat16)
    grad = torch.randn(4, 50, 64).to(torch.bfloat16)
    (a, grad_a), (b, grad_b) = forward_backward(plain, x, grad), forward_backward(fused, x, grad)
    assert a.dtype == b.dtype == torch.bfloat16
    exact = x.double() * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-6) * plain.weight.double()
    ulp = torch.finfo(torch.bfloat16).eps * exact.abs()
    assert ((a.double() - b.double()).abs() <= ulp + 1e-30).all()  # at most one unit in the last place apart
    assert not torch.equal(a, b)
    assert (b.double() - exact).abs().mean() < 0.9 * (a.double() - exact).abs().mean()
    torch.testing.assert_close(grad_b.float(), grad_a.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(("input_dtype", "weight_dtype"), [(torch.float32, torch.bfloat16),
                                                           (torch.bfloat16, torch.float32)])
def test_mixed_dtypes_compute_as_diffusers_does(input_dtype, weight_dtype):
    """diffusers normalises in the input's dtype and casts after; the fused kernel needs one dtype."""
    plain, fused = norm_pair(weight_dtype)
    x = torch.randn(2, 7, 64).to(input_dtype)
    assert torch.equal(plain(x), fused(x)) and fused(x).dtype == plain(x).dtype


def test_autocast_is_kept_out_of_the_call(monkeypatch):
    """CUDA's autocast runs rms_norm in fp32 and would hand an fp32 output on: the call runs without it."""
    plain, fused = norm_pair(torch.bfloat16)
    seen = []
    real = torch.nn.functional.rms_norm

    def spy(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "rms_norm", spy)
    x = torch.randn(2, 7, 64).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused(x)
        assert torch.is_autocast_enabled("cpu")  # restored after the call
    assert seen == [False] and out.dtype == plain(x).dtype == torch.bfloat16


def test_use_fused_rms_norm_is_idempotent_and_leaves_other_modules_alone():
    model = torch.nn.Sequential(RMSNorm(8, eps=1e-6), torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
    use_fused_rms_norm(use_fused_rms_norm(model))
    assert [type(m) for m in model] == [FusedRMSNorm, torch.nn.Linear, torch.nn.LayerNorm]


def test_the_fused_norm_compiles_to_one_graph():
    _, fused = norm_pair(torch.bfloat16)
    x = torch.randn(2, 7, 64).to(torch.bfloat16)
    explained = torch._dynamo.explain(fused)(x)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        explained = torch._dynamo.explain(fused)(x)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
