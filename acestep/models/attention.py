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

The DiT's sliding-window self-attention needs no dense mask where PyTorch's flash kernel runs: the
kernel takes the window itself (`window_size_left`/`_right`, keys with |i - j| <= window, the band
ACE-Step's mask keeps: diffusers' flash backend passes the same) and skips the key blocks outside it,
where every kernel that takes the dense mask reads all of them (20 of 36 blocks of 128 lie outside
the band at 60 s). `plan_attention` gives the DiT that path where the device and compute dtype have
the kernel and a probe call shows that it keeps exactly the band's keys, forward and backward
(`check_window_kernel`); the plan says which (`AttentionPlan.describe`). Only the DiT: its
sliding-window mask is the band alone, where the lyric encoder's also carries its padding.

RoPE is applied as ACE-Step's own model code (Qwen3's `apply_rotary_pos_emb`) applies it, in the
activation dtype: five kernels per call where diffusers' `apply_rotary_emb` takes eight (it casts
q or k and the rotated half to fp32 and the result back), the same bits as diffusers in fp32 and
the upstream model's bits in bf16.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from diffusers.models.transformers.ace_step_transformer import (
    AceStepAttention,
    AceStepTransformer1DModel,
    _create_4d_mask,
)
from torch import nn
from torch.nn.attention import SDPBackend

PROBE_TOKENS = 250  # sequence length of the probe calls: not a multiple of 64, as most crops are not
DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA", "meta": "Meta", "xpu": "XPU"}  # devices _fused_sdp_choice may serve
FLASH_DTYPES = (torch.float16, torch.bfloat16)  # what PyTorch's flash kernel computes in
WINDOW_PROBE_TOLERANCE = 0.05  # the window probe's largest difference from the masked call, per 1 + its size


@dataclass(frozen=True)
class AttentionPlan:
    """Which calls get their K/V heads repeated, and the kernel each kind of call gets.

    `kernels` maps "masked" and "unmasked" to the kernel name the dispatcher picks for the call
    as it is made (after the repeat, where there is one); empty for a plan made without probing.
    `window_dtype` is set where sliding-window self-attention runs on the flash kernel with its
    own window in that dtype instead (`windowed_flash_attention`); `dense_window_because` says why
    not where that was considered."""

    repeat_masked: bool = False
    repeat_unmasked: bool = False
    kernels: tuple[tuple[str, str], ...] = ()
    unplanned_because: str = "not planned"
    window_dtype: torch.dtype | None = None
    dense_window_because: str = ""

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
        if self.window_dtype is not None:
            parts[0] = f"sliding-window calls on the flash kernel with its own window, no dense mask (other {parts[0]})"
        elif self.dense_window_because:
            parts[0] += f" (sliding-window calls keep the dense mask: {self.dense_window_because})"
        return "attention: " + ", ".join(parts)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE of `x` [B, T, heads, head_dim] by `cos` and `sin` [T, head_dim], computed in
    `x`'s dtype as the upstream model code does (module docstring)."""
    cos, sin = cos[None, :, None, :].to(x.dtype), sin[None, :, None, :].to(x.dtype)
    first, second = x.unflatten(-1, (2, -1)).unbind(-2)  # halves as views (its backward is one stack)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


def windowed_flash_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, window: int,
                             scale: float | None = None) -> torch.Tensor:
    """Attention of each position over the keys at most `window` positions either side
    (|i - j| <= window) on PyTorch's flash kernel with its own window: query `[B, T, heads,
    head_dim]`, key and value `[B, T, kv_heads, head_dim]` (grouped heads as they are), all in
    fp16 or bf16 on a CUDA GPU; returns `[B, T, heads, head_dim]`. Autograd, the meta device and
    torch.compile know the operator; its backward keeps the same window."""
    length = query.shape[1]
    return torch.ops.aten._flash_attention_forward(
        query, key, value, None, None, length, length, 0.0, False, False,
        scale=scale, window_size_left=window, window_size_right=window)[0]


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
        window_dtype = self.plan.window_dtype
        if (window_dtype is not None and attention_mask is not None and not is_cross and attn.sliding_window is not None
                and not (attn.training and attn.dropout)):  # the mask is the band (plan_attention)
            out = windowed_flash_attention(query.to(window_dtype), key.to(window_dtype), value.to(window_dtype),
                                           attn.sliding_window, attn.scaling)
            return attn.to_out[1](attn.to_out[0](out.flatten(2, 3).to(query.dtype)))
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


def window_kernel_refusal(dtype: torch.dtype) -> str:
    """Why sliding-window calls in `dtype` on a CUDA GPU cannot run on the flash kernel with its
    own window; "" where they may (the probe, `check_window_kernel`, decides)."""
    if dtype not in FLASH_DTYPES:
        return f"the flash kernel computes in fp16 or bf16, not {str(dtype).removeprefix('torch.')}"
    if not torch.backends.cuda.is_flash_attention_available():
        return "this PyTorch build has no flash kernel"
    if not torch.backends.cuda.flash_sdp_enabled():
        return "the flash kernel is turned off (torch.backends.cuda.enable_flash_sdp(False))"
    return ""


def check_window_kernel(heads: int, kv_heads: int, head_dim: int, window: int, device: torch.device | str,
                        dtype: torch.dtype) -> str:
    """Run one windowed call (`windowed_flash_attention`) and the same call with ACE-Step's dense
    band mask through `scaled_dot_product_attention`, forward and backward, on `PROBE_TOKENS` + 2
    `window` tokens, and say how they differ; "" where each element agrees within
    `WINDOW_PROBE_TOLERANCE` times 1 + its size (a few bf16 roundings where both are right).

    The keys make each kind of K/V head attend to one end of its window: key j is j along the
    first feature (-j on every other K/V head) and every query is large along it, so each query
    takes the value of the last (first) key of its band. A window one key too wide or too narrow
    on either side, forward or in the backward pass's value gradient, then differs by about the
    values' size (N(0, 1)), not by a rounding. Runs with autograd on whatever mode the caller is in
    (a loader under `torch.inference_mode`)."""
    with torch.inference_mode(False), torch.enable_grad():
        return _compare_window_kernel(heads, kv_heads, head_dim, window, device, dtype)


def _compare_window_kernel(heads: int, kv_heads: int, head_dim: int, window: int, device: torch.device | str,
                           dtype: torch.dtype) -> str:
    length = PROBE_TOKENS + 2 * window
    generator = torch.Generator().manual_seed(0)
    positions = torch.arange(length, dtype=torch.float32)
    key = torch.zeros(1, length, kv_heads, head_dim)
    key[..., 0] = positions[:, None] * torch.tensor([1.0, -1.0]).repeat(kv_heads)[:kv_heads]
    query = torch.zeros(1, length, heads, head_dim)
    query[..., 0] = 10.0 * head_dim ** 0.5  # scores (scaled by head_dim ** -0.5) 10 apart between neighbours
    value = torch.randn(1, length, kv_heads, head_dim, generator=generator)
    grad = torch.randn(1, length, heads, head_dim, generator=generator)
    query, key, value, grad = (x.to(device, dtype) for x in (query, key, value, grad))
    mask = _create_4d_mask(seq_len=length, dtype=dtype, device=torch.device(device), sliding_window=window,
                           is_sliding_window=True, is_causal=False)  # the DiT's own band mask

    def masked(value):
        return F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                              attn_mask=mask, enable_gqa=heads != kv_heads).transpose(1, 2)

    def output_and_value_gradient(attention) -> tuple[torch.Tensor, torch.Tensor]:
        leaf = value.clone().requires_grad_()
        out = attention(leaf)
        out.backward(grad)
        return out.detach().float(), leaf.grad.float()

    try:
        results = output_and_value_gradient(lambda value: windowed_flash_attention(query, key, value, window))
    except (RuntimeError, TypeError, NotImplementedError) as error:  # a build or version without the window
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"the flash kernel refused a windowed call: {message}"
    expected = output_and_value_gradient(masked)
    differences = {name: ((got - want).abs() / (1 + want.abs())).max().item()
                   for name, got, want in zip(("output", "value gradient"), results, expected, strict=True)}
    wrong = {name: diff for name, diff in differences.items() if not diff <= WINDOW_PROBE_TOLERANCE}
    if wrong:
        return "a windowed call on the flash kernel differs from the masked call (" + ", ".join(
            f"{name} by {diff:.3g} of 1 + its size" for name, diff in wrong.items()) + ")"
    return ""


def _band_window(module: nn.Module) -> int | None:
    """The window of `module`'s sliding-window self-attention where its mask is the band alone: the
    DiT (diffusers builds its mask from the length and the window only); None elsewhere."""
    if isinstance(module, AceStepTransformer1DModel) and "sliding_attention" in module.layer_types:
        return int(module.config.sliding_window)
    return None


def plan_windows(plan: AttentionPlan, shape: tuple[int, int, int], window: int, device: torch.device | str,
                 dtype: torch.dtype) -> AttentionPlan:
    """`plan` with sliding-window calls of `window` on the flash kernel where `window_kernel_refusal`
    and `check_window_kernel` allow it, else with the reason they keep the dense mask."""
    reason = window_kernel_refusal(dtype) or check_window_kernel(*shape, window, device, dtype)
    return replace(plan, window_dtype=None if reason else dtype, dense_window_because=reason)


def plan_for_shape(shape: tuple[int, int, int], device: torch.device | str, dtype: torch.dtype,
                   window: int | None = None) -> AttentionPlan:
    """The plan for attention layers of `shape` (heads, K/V heads, head_dim) on `device` in `dtype`
    (`probe_plan`), with their sliding-window calls of `window` planned on a CUDA device
    (`plan_windows`; PyTorch's flash kernel is CUDA's). `window`: None where the calls' mask is
    not the band alone."""
    plan = probe_plan(*shape, device, dtype)
    if window is not None and torch.device(device).type == "cuda":
        plan = plan_windows(plan, shape, window, device, dtype)
    return plan


def plan_attention(module: nn.Module, device: torch.device | str, dtype: torch.dtype) -> AttentionPlan:
    """Give every ACE-Step attention layer of `module` an `AceStepAttentionProcessor` planned for
    calls on `device` in `dtype` (the compute dtype: autocast's under mixed precision), the DiT's
    sliding-window calls on the flash kernel with its own window where that runs (module
    docstring). Layers of another shape than the first get their own processor and plan. Returns
    the first layer's plan (an unplanned one when `module` has no attention layer). Idempotent; call
    it again after a change of device or dtype."""
    window = _band_window(module)  # the DiT's
    processors: dict[tuple[int, int, int], AceStepAttentionProcessor] = {}
    for layer in _attention_layers(module):
        shape = (layer.heads, layer.kv_heads, layer.head_dim)
        if shape not in processors:
            processors[shape] = AceStepAttentionProcessor(plan_for_shape(shape, device, dtype, window))
        layer.set_processor(processors[shape])
    return next(iter(processors.values())).plan if processors else AttentionPlan()


def use_attention_processor(module: nn.Module) -> nn.Module:
    """Give every ACE-Step attention layer of `module` an unplanned `AceStepAttentionProcessor`
    (the loader does this when it builds a module; `plan_attention` plans it). Returns `module`."""
    for layer in _attention_layers(module):
        if not isinstance(layer.processor, AceStepAttentionProcessor):
            layer.set_processor(AceStepAttentionProcessor())
    return module
