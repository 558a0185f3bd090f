"""The attention call of every ACE-Step attention layer, kept on a fused kernel.

All of ACE-Step's attention layers are grouped-query (16 query heads share 8 key/value heads in
the 2B and XL models), and the sliding-window layers of the DiT and the encoders also pass a
dense additive band mask. diffusers' processor hands both to `scaled_dot_product_attention` with
`enable_gqa=True` and leaves the kernel to PyTorch's dispatcher, which takes the first of its
kernels that accepts the call: flash attention refuses any mask, some builds' memory-efficient
kernel refuses grouped K/V heads, cuDNN comes first only on some GPUs, cuDNN versions and wheels
(sdp_utils.cpp, `check_prefer_cudnn_attention`), and Windows wheels have no flash kernel. Where
none accepts the call, the math kernel runs it: several kernels per call, fp32 probabilities of
`heads x T x T` per sample kept for the backward pass.

`AceStepAttentionProcessor` makes the same call as diffusers' processor on its native backend
(same projections, norms and SDPA arguments), except that where `plan_attention` found that the
dispatcher of this device and dtype would run a kind of call on the math kernel while the call with
K/V heads repeated to the query heads gets a fused one, it repeats them (`repeat_interleave` over
heads, exactly what `enable_gqa` means). The plan is made once per device and compute dtype,
outside the forward pass, so the forward stays one graph under `torch.compile`.

RoPE is applied as ACE-Step's own model code (Qwen3's `apply_rotary_pos_emb`) applies it, in the
activation dtype: five kernels per call where diffusers' `apply_rotary_emb` takes eight (it casts
q or k and the rotated half to fp32 and the result back), the same bits as diffusers in fp32 and
the upstream model's bits in bf16.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.transformers.ace_step_transformer import AceStepAttention
from torch import nn
from torch.nn.attention import SDPBackend

PROBE_TOKENS = 250  # sequence length of the probe calls: not a multiple of 64, as most crops are not
DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA", "meta": "Meta", "xpu": "XPU"}  # devices _fused_sdp_choice may serve


@dataclass(frozen=True)
class AttentionPlan:
    """Which calls get their K/V heads repeated, and the kernel each kind of call gets.

    `kernels` maps "masked" and "unmasked" to the kernel name the dispatcher picks for the call
    as it is made (after the repeat, where there is one); empty for a plan made without probing."""

    repeat_masked: bool = False
    repeat_unmasked: bool = False
    kernels: tuple[tuple[str, str], ...] = ()
    unplanned_because: str = "not planned"

    def repeats(self, masked: bool) -> bool:
        return self.repeat_masked if masked else self.repeat_unmasked

    def describe(self) -> str:
        if not self.kernels:
            return f"attention: grouped K/V heads passed to PyTorch as they are ({self.unplanned_because})"
        kernels = dict(self.kernels)
        parts = []
        for kind in ("masked", "unmasked"):
            repeated = " with K/V heads repeated (the math kernel otherwise)" if self.repeats(kind == "masked") else ""
            parts.append(f"{kind} calls on the {kernels[kind]} kernel{repeated}")
        return "attention: " + ", ".join(parts)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE of `x` [B, T, heads, head_dim] by `cos` and `sin` [T, head_dim], computed in
    `x`'s dtype as the upstream model code does (module docstring)."""
    cos, sin = cos[None, :, None, :].to(x.dtype), sin[None, :, None, :].to(x.dtype)
    first, second = x.unflatten(-1, (2, -1)).unbind(-2)  # halves as views (its backward is one stack)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


class AceStepAttentionProcessor:
    """diffusers' `AceStepAttnProcessor2_0` on the native backend, with K/V heads repeated where
    `plan` says so and RoPE by `rope` (`apply_rope`; any `(x, cos, sin) -> x`). One instance
    serves every attention layer of a module."""

    _attention_backend = None  # read by diffusers' models: None is the native backend
    _parallel_config = None

    def __init__(self, plan: AttentionPlan | None = None):
        self.plan = plan or AttentionPlan()
        self.rope = apply_rope

    def __call__(self, attn: AceStepAttention, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        is_cross = attn.is_cross_attention and encoder_hidden_states is not None
        source = encoder_hidden_states if is_cross else hidden_states
        query = attn.norm_q(attn.to_q(hidden_states).unflatten(-1, (attn.heads, attn.head_dim)))
        key = attn.norm_k(attn.to_k(source).unflatten(-1, (attn.kv_heads, attn.head_dim)))
        value = attn.to_v(source).unflatten(-1, (attn.kv_heads, attn.head_dim))
        if not is_cross and image_rotary_emb is not None:  # RoPE on self-attention only
            query, key = self.rope(query, *image_rotary_emb), self.rope(key, *image_rotary_emb)
        query, key, value = (x.transpose(1, 2) for x in (query, key, value))  # [B, heads, T, head_dim]
        grouped = attn.heads != attn.kv_heads
        if grouped and self.plan.repeats(attention_mask is not None):
            groups = attn.heads // attn.kv_heads
            key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
            grouped = False
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                             dropout_p=attn.dropout if attn.training else 0.0, scale=attn.scaling,
                                             enable_gqa=grouped)
        out = out.transpose(1, 2).flatten(2, 3).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out))


# diffusers' AceStepAttention.forward asks for the processor's signature on every call (to filter its
# keyword arguments); a stored one answers in a third of the time (about 11 us less per call, 48
# to 96 calls per training step).
AceStepAttentionProcessor.__call__.__signature__ = inspect.signature(AceStepAttentionProcessor.__call__)


def _attention_layers(module: nn.Module) -> list[AceStepAttention]:
    return [m for m in module.modules() if isinstance(m, AceStepAttention)]


def _kernel(query, key, value, mask, grouped: bool) -> SDPBackend:
    return SDPBackend(torch._fused_sdp_choice(query, key, value, mask, enable_gqa=grouped))


def probe_plan(heads: int, kv_heads: int, head_dim: int, device: torch.device | str, dtype: torch.dtype
               ) -> AttentionPlan:
    """The plan for attention of this shape on `device` in `dtype`, from what PyTorch's dispatcher
    picks (`torch._fused_sdp_choice`) for probe calls of `PROBE_TOKENS` tokens with and without a
    band mask, grouped and with K/V heads repeated. Repeats only where that moves a call off the
    math kernel; allocates a few hundred KiB on the device for the probes. A device without that
    choice (Apple's MPS) gets an unplanned plan that says so."""
    device = torch.device(device)
    dispatch_key = DISPATCH_KEYS.get(device.type)
    if dispatch_key is None or not torch._C._dispatch_has_kernel_for_dispatch_key("aten::_fused_sdp_choice",
                                                                                   dispatch_key):
        # e.g. Apple's MPS: its attention has no kernel choice to ask about, and takes grouped heads
        return AttentionPlan(unplanned_because=f"PyTorch has no kernel choice to plan on {device.type}")
    # as training makes them: tensors that need a gradient
    query = torch.zeros(1, heads, PROBE_TOKENS, head_dim, device=device, dtype=dtype, requires_grad=True)
    key = torch.zeros(1, kv_heads, PROBE_TOKENS, head_dim, device=device, dtype=dtype, requires_grad=True)
    repeated = key.repeat_interleave(heads // kv_heads, dim=1) if heads != kv_heads else key
    mask = torch.zeros(1, 1, PROBE_TOKENS, PROBE_TOKENS, device=device, dtype=dtype)
    repeat, kernels = {}, {}
    for kind, kind_mask in (("masked", mask), ("unmasked", None)):
        as_made = _kernel(query, key, key, kind_mask, heads != kv_heads)
        with_repeat = _kernel(query, repeated, repeated, kind_mask, False)
        repeat[kind] = heads != kv_heads and as_made == SDPBackend.MATH and with_repeat != SDPBackend.MATH
        kernels[kind] = (with_repeat if repeat[kind] else as_made).name.lower()
    return AttentionPlan(repeat["masked"], repeat["unmasked"], tuple(kernels.items()))


def plan_attention(module: nn.Module, device: torch.device | str, dtype: torch.dtype) -> AttentionPlan:
    """Give every ACE-Step attention layer of `module` an `AceStepAttentionProcessor` planned for
    calls on `device` in `dtype` (the compute dtype: autocast's under mixed precision). Layers of
    another shape than the first get their own processor and plan. Returns the first layer's plan
    (an unplanned one when `module` has no attention layer). Idempotent; call it again after a
    change of device or dtype."""
    processors: dict[tuple[int, int, int], AceStepAttentionProcessor] = {}
    for layer in _attention_layers(module):
        shape = (layer.heads, layer.kv_heads, layer.head_dim)
        if shape not in processors:
            processors[shape] = AceStepAttentionProcessor(probe_plan(*shape, device, dtype))
        layer.set_processor(processors[shape])
    return next(iter(processors.values())).plan if processors else AttentionPlan()


def use_attention_processor(module: nn.Module) -> nn.Module:
    """Give every ACE-Step attention layer of `module` an unplanned `AceStepAttentionProcessor`
    (the loader does this when it builds a module; `plan_attention` plans it). Returns `module`."""
    for layer in _attention_layers(module):
        if not isinstance(layer.processor, AceStepAttentionProcessor):
            layer.set_processor(AceStepAttentionProcessor())
    return module
