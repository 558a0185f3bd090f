"""Every ACE-Step attention layer runs `AceStepAttentionProcessor` (acestep/models/attention.py): the
same result as diffusers' processor in fp32, RoPE as the upstream model code computes it in bf16,
and K/V heads repeated exactly where the device's dispatcher would otherwise run the math kernel."""

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.ace_step_transformer import (
    AceStepAttention,
    AceStepAttnProcessor2_0,
    _ace_step_rotary_freqs,
)
from torch.nn.attention import SDPBackend

from acestep.models import load_acestep
from acestep.models.attention import (
    AceStepAttentionProcessor,
    AttentionPlan,
    apply_rope,
    plan_attention,
    probe_plan,
)
from acestep.training.objective import context_latents
from models.test_layout import CountOps

REAL_CHOICE = torch._fused_sdp_choice


def transformer(tiny_checkpoints):
    return load_acestep(tiny_checkpoints / "acestep-v15-turbo", dtype=torch.float32,
                        components=("transformer",)).transformer


def forward_backward(model, frames: int = 40, batch: int = 2):
    """Prediction and the gradient of every parameter of a forward + backward on fixed inputs."""
    generator = torch.Generator().manual_seed(0)
    model.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    inputs = {"hidden_states": torch.randn(batch, frames, 64, generator=generator),
              "timestep": torch.full((batch,), 0.7), "timestep_r": torch.full((batch,), 0.7),
              "encoder_hidden_states": torch.randn(batch, 9, model.condition_embedder.in_features, generator=generator),
              "context_latents": context_latents(torch.zeros(1, frames, 64), frames, batch)}
    prediction = model(**inputs).sample
    prediction.pow(2).mean().backward()
    return prediction.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def set_processors(model, processor) -> None:
    for layer in model.modules():
        if isinstance(layer, AceStepAttention):
            layer.set_processor(processor)


class SdpaCalls:
    """Records the GQA flag and K/V heads of every scaled_dot_product_attention call."""

    def __init__(self, monkeypatch):
        self.calls = []
        original = F.scaled_dot_product_attention

        def record(query, key, value, attn_mask=None, **kwargs):
            self.calls.append((attn_mask is not None, kwargs.get("enable_gqa", False), key.shape[1]))
            return original(query, key, value, attn_mask=attn_mask, **kwargs)

        monkeypatch.setattr(F, "scaled_dot_product_attention", record)


def gpu_without_grouped_efficient_kernel(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                         scale=None, enable_gqa=False):
    """The dispatch of a GPU whose flash kernel refuses masks and whose efficient kernel refuses
    grouped K/V heads (sdp_utils.cpp's rules on such a build), for the probe calls."""
    if attn_mask is None:
        return int(SDPBackend.FLASH_ATTENTION)
    return int(SDPBackend.MATH if enable_gqa else SDPBackend.EFFICIENT_ATTENTION)


def test_the_loader_installs_the_processor_and_it_matches_diffusers_bit_for_bit(tiny_checkpoints):
    model = transformer(tiny_checkpoints)
    layers = [m for m in model.modules() if isinstance(m, AceStepAttention)]
    assert layers and all(isinstance(layer.processor, AceStepAttentionProcessor) for layer in layers)
    ours, our_grads = forward_backward(model)
    set_processors(model, AceStepAttnProcessor2_0())
    theirs, their_grads = forward_backward(model)
    assert torch.equal(ours, theirs)
    assert all(torch.equal(our_grads[name], their_grads[name]) for name in our_grads)


def upstream_rope(x, cos, sin):
    """Qwen3's `apply_rotary_pos_emb` as the ACE-Step model code calls it: q * cos + rotate_half(q) * sin."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[None, :, None] + rotated * sin[None, :, None]


def diffusers_rope(x, cos, sin):
    return apply_rotary_emb(x, (cos, sin), use_real=True, use_real_unbind_dim=-2, sequence_dim=1)


def kernels_of_rope(rope, x, cos, sin) -> int:
    """Operators other than views of RoPE's forward and backward."""
    x = x.clone().requires_grad_()
    with CountOps() as ops:
        rope(x, cos, sin).backward(torch.ones_like(x))
    views = ("view", "unsqueeze", "slice", "unbind", "split", "expand", "as_strided", "detach", "alias")
    return sum(n for name, n in ops.counts.items() if name.split(".")[0] not in views)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_gives_diffusers_bits_in_fp32_and_the_upstream_models_bits_in_bf16(dtype):
    torch.manual_seed(0)
    cos, sin = _ace_step_rotary_freqs(37, 16, 1e6, torch.device("cpu"), dtype)  # the transformer's own
    x = (torch.randn(2, 37, 4, 16) * 3).to(dtype)
    ours = apply_rope(x, cos, sin)
    assert ours.dtype == dtype and torch.equal(ours, upstream_rope(x, cos, sin))
    if dtype == torch.float32:
        assert torch.equal(ours, diffusers_rope(x, cos, sin))
    else:  # diffusers computes in fp32 and rounds once: within a bf16 rounding or two of it
        assert not torch.equal(ours, diffusers_rope(x, cos, sin))
        torch.testing.assert_close(ours.float(), diffusers_rope(x, cos, sin).float(), rtol=2e-2, atol=4e-2)
        assert kernels_of_rope(apply_rope, x, cos, sin) <= kernels_of_rope(diffusers_rope, x, cos, sin) - 5


def test_repeated_kv_heads_give_the_grouped_result_forward_and_backward(tiny_checkpoints, monkeypatch):
    model = transformer(tiny_checkpoints)
    calls = SdpaCalls(monkeypatch)
    grouped, grouped_grads = forward_backward(model)
    assert {(masked, gqa) for masked, gqa, _ in calls.calls} == {(True, True), (False, True)}

    calls.calls.clear()
    set_processors(model, AceStepAttentionProcessor(AttentionPlan(repeat_masked=True, repeat_unmasked=True)))
    repeated, repeated_grads = forward_backward(model)
    heads = model.layers[0].self_attn.heads
    assert calls.calls and all(not gqa and kv_heads == heads for _, gqa, kv_heads in calls.calls)
    torch.testing.assert_close(repeated, grouped, rtol=1e-5, atol=1e-6)
    for name, grad in grouped_grads.items():
        torch.testing.assert_close(repeated_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_only_the_calls_the_plan_names_are_repeated(tiny_checkpoints, monkeypatch):
    model = transformer(tiny_checkpoints)
    set_processors(model, AceStepAttentionProcessor(AttentionPlan(repeat_masked=True)))
    calls = SdpaCalls(monkeypatch)
    forward_backward(model)
    heads, kv_heads = model.layers[0].self_attn.heads, model.layers[0].self_attn.kv_heads
    assert {call for call in calls.calls} == {(True, False, heads), (False, True, kv_heads)}


def test_the_plan_repeats_where_the_dispatcher_would_fall_back_to_math(monkeypatch):
    monkeypatch.setattr(torch, "_fused_sdp_choice", gpu_without_grouped_efficient_kernel)
    plan = probe_plan(16, 8, 128, "cpu", torch.bfloat16)
    assert plan.repeat_masked and not plan.repeat_unmasked
    assert dict(plan.kernels) == {"masked": "efficient_attention", "unmasked": "flash_attention"}
    assert "masked calls on the efficient_attention kernel with K/V heads repeated" in plan.describe()


def test_the_plan_keeps_grouped_heads_where_repeating_would_not_leave_math_or_a_kernel_takes_them():
    # the meta device has only the math kernel: repeating would gain nothing
    assert probe_plan(16, 8, 128, "meta", torch.bfloat16) == AttentionPlan(
        kernels=(("masked", "math"), ("unmasked", "math")))
    # PyTorch's CPU flash kernel takes masks and grouped heads
    plan = probe_plan(16, 8, 128, "cpu", torch.bfloat16)
    assert not plan.repeat_masked and not plan.repeat_unmasked
    assert REAL_CHOICE(torch.zeros(1, 16, 8, 128), torch.zeros(1, 8, 8, 128), torch.zeros(1, 8, 8, 128),
                       torch.zeros(1, 1, 8, 8), enable_gqa=True) == int(SDPBackend.FLASH_ATTENTION)
    assert dict(plan.kernels) == {"masked": "flash_attention", "unmasked": "flash_attention"}
    # equal heads: nothing to repeat whatever the kernel
    assert not probe_plan(8, 8, 64, "meta", torch.float32).repeat_masked


def test_plan_attention_plans_every_layer_and_is_idempotent(tiny_checkpoints, monkeypatch):
    model = transformer(tiny_checkpoints)
    monkeypatch.setattr(torch, "_fused_sdp_choice", gpu_without_grouped_efficient_kernel)
    plan = plan_attention(model, "cpu", torch.bfloat16)
    again = plan_attention(model, "cpu", torch.bfloat16)
    assert plan == again and plan.repeat_masked
    processors = {id(m.processor) for m in model.modules() if isinstance(m, AceStepAttention)}
    assert len(processors) == 1  # one processor (and plan) for layers of one shape
    assert all(m.processor.plan == plan for m in model.modules() if isinstance(m, AceStepAttention))


@pytest.mark.parametrize("component", ["condition_encoder", "audio_tokenizer"])
def test_the_encoders_run_the_processor_and_the_loader_plans_them(tiny_checkpoints, component):
    bundle = load_acestep(tiny_checkpoints / "acestep-v15-turbo", dtype=torch.float32, components=(component,))
    module = getattr(bundle, component)
    layers = [m for m in module.modules() if isinstance(m, AceStepAttention)]
    assert layers and all(isinstance(m.processor, AceStepAttentionProcessor) for m in layers)
    assert all(m.processor.plan.kernels for m in layers)  # planned for the device, not left unplanned


def test_diffusers_reads_the_stored_signature_of_the_processor():
    """AceStepAttention.forward filters its keyword arguments by the processor's signature on every
    call: the stored one must name what the processor takes."""
    import inspect

    assert "__signature__" in vars(AceStepAttentionProcessor.__call__)
    names = list(inspect.signature(AceStepAttentionProcessor().__call__).parameters)
    assert names == ["attn", "hidden_states", "encoder_hidden_states", "attention_mask", "image_rotary_emb"]


def test_a_device_without_a_kernel_choice_is_left_unplanned_and_says_why(monkeypatch):
    """Apple's MPS has no `_fused_sdp_choice` kernel: planning there must not fail, nor allocate."""
    monkeypatch.setattr(torch._C, "_dispatch_has_kernel_for_dispatch_key", lambda op, key: key != "CPU")
    plan = probe_plan(16, 8, 128, "cpu", torch.bfloat16)
    assert plan == AttentionPlan(unplanned_because="PyTorch has no kernel choice to plan on cpu")
    assert plan.describe() == ("attention: grouped K/V heads passed to PyTorch as they are (PyTorch has no "
                               "kernel choice to plan on cpu)")
    assert probe_plan(16, 8, 128, "mps", torch.float16).unplanned_because.endswith("on mps")
