"""The DiT's sliding-window calls on a CUDA GPU's own flash kernel (`acestep.models.attention`):
the plan takes the window where the GPU has the kernel, and the windowed call computes what the
masked call computes, at the 2B model's shape and through the tiny DiT, forward and backward.
Skipped without a CUDA GPU (the CPU tests stand a reference kernel in for it); part of the
prepared GPU session (benchmarks/gpu_check.sh)."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.transformers.ace_step_transformer import AceStepAttention, _create_4d_mask

from acestep.models import load_acestep
from acestep.models.attention import plan_attention, windowed_flash_attention
from acestep.training.objective import context_latents

DEVICE = "cuda"
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def has_flash_kernel() -> bool:
    """PyTorch's flash kernel runs here: built in, and a GPU of compute capability 8.0 or newer."""
    return torch.backends.cuda.is_flash_attention_available() and torch.cuda.get_device_capability() >= (8, 0)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


def masked_call(query, key, value, window):
    """The call as the DiT makes it: `[B, T, heads, head_dim]` transposed for SDPA, the dense band
    mask of diffusers' `_create_4d_mask` (0 kept, the dtype's minimum elsewhere)."""
    mask = _create_4d_mask(seq_len=query.shape[1], dtype=query.dtype, device=query.device, sliding_window=window,
                           is_sliding_window=True, is_causal=False)
    return F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                          attn_mask=mask, enable_gqa=query.shape[2] != key.shape[2]).transpose(1, 2)


def output_and_gradients(attention, inputs, grad):
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    out = attention(*leaves)
    out.backward(grad)
    return [out.detach()] + [leaf.grad for leaf in leaves]


def test_the_2b_sliding_window_call_on_the_window_kernel_is_as_exact_as_the_masked_call():
    """Batch 2 x 60 s at the 2B shape (16 query heads, 8 K/V heads, head_dim 128, window 128) in
    bf16: the output and the query, key and value gradients are about as near the fp32 result as
    the masked call's (within twice its error, and under 2%). For scale, in fp32 on a CPU: a window
    one key wider differs from the output by 8%, a window ignored by 83%."""
    if not has_flash_kernel():
        pytest.skip("PyTorch's flash kernel does not run on this GPU or build")
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    shapes = ((2, 750, 16, 128), (2, 750, 8, 128), (2, 750, 8, 128))
    inputs = [torch.randn(shape, device=DEVICE, generator=generator) for shape in shapes]
    grad = torch.randn(shapes[0], device=DEVICE, generator=generator)
    exact = output_and_gradients(lambda q, k, v: masked_call(q, k, v, 128), inputs, grad)  # fp32
    low = [x.bfloat16() for x in inputs]
    windowed = output_and_gradients(lambda q, k, v: windowed_flash_attention(q, k, v, 128), low, grad.bfloat16())
    masked = output_and_gradients(lambda q, k, v: masked_call(q, k, v, 128), low, grad.bfloat16())
    for name, w, m, e in zip(("output", "query grad", "key grad", "value grad"), windowed, masked, exact, strict=True):
        error, reference = relative_error(w, e), relative_error(m, e)
        assert error < 2e-2 and error <= 2 * reference + 1e-3, (name, error, reference)


def forward_backward(model, frames: int = 160, batch: int = 2):
    generator = torch.Generator().manual_seed(0)
    model.zero_grad(set_to_none=True)
    width = model.condition_embedder.in_features
    inputs = {"hidden_states": torch.randn(batch, frames, 64, generator=generator),
              "timestep": torch.full((batch,), 0.7), "timestep_r": torch.full((batch,), 0.7),
              "encoder_hidden_states": torch.randn(batch, 9, width, generator=generator),
              "context_latents": context_latents(torch.zeros(1, frames, 64), frames, batch)}
    inputs = {name: x.to(DEVICE, torch.bfloat16) for name, x in inputs.items()}
    prediction = model(**inputs).sample
    prediction.float().pow(2).mean().backward()
    return prediction.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_the_tiny_dit_plans_the_window_and_trains_as_with_the_mask(tiny_checkpoints):
    """The plan's probe passes on this GPU (where the kernel runs), and the DiT's prediction and
    every parameter's gradient with the window match those with the dense mask to bf16 rounding."""
    model = load_acestep(tiny_checkpoints / "acestep-v15-turbo", dtype=torch.bfloat16, device=DEVICE,
                         components=("transformer",)).transformer.train().requires_grad_(True)
    plan = plan_attention(model, DEVICE, torch.bfloat16)
    if not has_flash_kernel():
        assert plan.window_dtype is None and plan.dense_window_because, plan.describe()
        pytest.skip(f"no window kernel here: {plan.dense_window_because}")
    assert plan.window_dtype == torch.bfloat16, plan.describe()
    windowed, windowed_grads = forward_backward(model)  # 80 tokens: the window of 16 leaves keys out
    for layer in model.modules():
        if isinstance(layer, AceStepAttention):
            layer.processor.plan = replace(layer.processor.plan, window_dtype=None)
    masked, masked_grads = forward_backward(model)
    assert relative_error(windowed, masked) < 2e-2
    for name, grad in masked_grads.items():
        assert relative_error(windowed_grads[name], grad) < 5e-2, name
