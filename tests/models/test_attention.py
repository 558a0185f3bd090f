"""Every ACE-Step attention layer runs `AceStepAttentionProcessor` (acestep/models/attention.py): the
same result as diffusers' processor in fp32, RoPE as the upstream model code computes it in bf16,
K/V heads repeated exactly where the device's dispatcher would otherwise run the math kernel, and
the DiT's sliding-window calls on the flash kernel with its own window where a probe shows that
it keeps the band (the kernel is CUDA's: here a reference stands in for it)."""

from dataclasses import replace

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
    check_window_kernel,
    plan_attention,
    plan_windows,
    probe_plan,
    window_kernel_refusal,
    windowed_flash_attention,
)
from acestep.training.objective import context_latents
from models.test_layout import CountOps

REAL_CHOICE = torch._fused_sdp_choice
REAL_SDPA = F.scaled_dot_product_attention  # for the reference kernel, past SdpaCalls' records


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


def band_attention(query, key, value, window, scale=None, left_extra=0, right_extra=0):
    """What `windowed_flash_attention` computes, by a dense mask on any device: each position over
    the keys with -(window + left_extra) <= j - i <= window + right_extra; the extras make it wrong."""
    length = query.shape[1]
    offsets = torch.arange(length)[None, :] - torch.arange(length)[:, None]  # j - i
    keep = (offsets >= -(window + left_extra)) & (offsets <= window + right_extra)
    return REAL_SDPA(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=keep.to(query.device),
                     scale=scale, enable_gqa=query.shape[2] != key.shape[2]).transpose(1, 2)


class WindowedCalls:
    """`windowed_flash_attention` replaced by `band_attention` (or `kernel`), recording each call's
    query and key/value shapes and window."""

    def __init__(self, monkeypatch, kernel=band_attention):
        self.calls = []

        def record(query, key, value, window, scale=None):
            self.calls.append((tuple(query.shape), tuple(key.shape), window))
            return kernel(query, key, value, window, scale)

        monkeypatch.setattr("acestep.models.attention.windowed_flash_attention", record)


def test_windowed_calls_give_the_masked_result_forward_and_backward(tiny_checkpoints, monkeypatch):
    model = transformer(tiny_checkpoints)
    masked, masked_grads = forward_backward(model, frames=80)  # 40 tokens: the window of 16 leaves keys out
    calls = WindowedCalls(monkeypatch)
    sdpa = SdpaCalls(monkeypatch)
    set_processors(model, AceStepAttentionProcessor(AttentionPlan(window_dtype=torch.float32)))
    windowed, windowed_grads = forward_backward(model, frames=80)
    attention = model.layers[0].self_attn
    sliding = model.layer_types.count("sliding_attention")
    assert sliding and calls.calls == [((2, 40, attention.heads, attention.head_dim),
                                        (2, 40, attention.kv_heads, attention.head_dim), 16)] * sliding
    assert not any(masked for masked, _, _ in sdpa.calls)  # the others: full self-attention, cross-attention
    assert len(sdpa.calls) == len(model.layers) + len(model.layers) - sliding
    torch.testing.assert_close(windowed, masked, rtol=1e-5, atol=1e-6)
    for name, grad in masked_grads.items():
        torch.testing.assert_close(windowed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_a_window_one_key_off_changes_the_prediction(tiny_checkpoints, monkeypatch):
    """The check above can fail: a kernel whose window is one key wider gives another prediction."""
    model = transformer(tiny_checkpoints)
    masked, _ = forward_backward(model, frames=80)
    WindowedCalls(monkeypatch, lambda q, k, v, window, scale: band_attention(q, k, v, window, scale, right_extra=1))
    set_processors(model, AceStepAttentionProcessor(AttentionPlan(window_dtype=torch.float32)))
    wider, _ = forward_backward(model, frames=80)
    assert (wider - masked).abs().max() > 1e-3


def test_attention_dropout_in_training_keeps_the_masked_call(tiny_checkpoints, monkeypatch):
    model = transformer(tiny_checkpoints)
    calls = WindowedCalls(monkeypatch)
    set_processors(model, AceStepAttentionProcessor(AttentionPlan(window_dtype=torch.float32)))
    for layer in model.modules():
        if isinstance(layer, AceStepAttention):
            layer.dropout = 0.1
    model.train()
    forward_backward(model, frames=80)
    assert calls.calls == []  # the flash kernel's windowed call takes no dropout
    model.eval()
    with torch.no_grad():
        model(hidden_states=torch.randn(1, 80, 64), timestep=torch.full((1,), 0.5), timestep_r=torch.full((1,), 0.5),
              encoder_hidden_states=torch.randn(1, 9, model.condition_embedder.in_features),
              context_latents=context_latents(torch.zeros(1, 80, 64), 80, 1))
    assert len(calls.calls) == model.layer_types.count("sliding_attention")  # dropout is off in eval


def rounding_once(**extra):
    """`band_attention` computed in fp32 and rounded once to the inputs' dtype, as a fused kernel does."""
    return lambda q, k, v, window, scale: band_attention(q.float(), k.float(), v.float(), window, scale,
                                                         **extra).to(q.dtype)


@pytest.mark.parametrize("heads, kv_heads, head_dim, window, dtype", [
    (16, 8, 64, 16, torch.float32), (4, 4, 64, 16, torch.float32), (16, 8, 128, 128, torch.bfloat16)])
def test_the_window_probe_accepts_the_band_and_catches_a_window_one_key_off(monkeypatch, heads, kv_heads, head_dim,
                                                                            window, dtype):
    """Grouped and plain heads, and the 2B model's shape in bf16 (where positions above 256 round
    to even keys, so neighbouring keys tie: the probe still tells the windows apart)."""
    WindowedCalls(monkeypatch, rounding_once())
    assert check_window_kernel(heads, kv_heads, head_dim, window, "cpu", dtype) == ""
    with torch.inference_mode():  # as a loader may call it: the probe needs autograd all the same
        assert check_window_kernel(heads, kv_heads, head_dim, window, "cpu", dtype) == ""
    for extra in ({"right_extra": 1}, {"right_extra": -1}, {"left_extra": 1}, {"left_extra": -1}):
        WindowedCalls(monkeypatch, rounding_once(**extra))
        reason = check_window_kernel(heads, kv_heads, head_dim, window, "cpu", dtype)
        assert reason.startswith("a windowed call on the flash kernel differs from the masked call (output by "), extra
        assert "value gradient by" in reason, extra


def test_a_kernel_that_refuses_the_window_is_reported_not_raised(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("FlashAttention only supports Ampere GPUs or newer.\nmore lines")

    monkeypatch.setattr("acestep.models.attention.windowed_flash_attention", refuse)
    monkeypatch.setattr(torch.backends.cuda, "is_flash_attention_available", lambda: True)  # as on a GPU
    assert check_window_kernel(16, 8, 64, 16, "cpu", torch.float32) == (
        "the flash kernel refused a windowed call: FlashAttention only supports Ampere GPUs or newer.")
    plan = plan_windows(AttentionPlan(kernels=(("masked", "efficient_attention"), ("unmasked", "flash_attention"))),
                        (16, 8, 64), 16, "cpu", torch.bfloat16)
    assert plan.window_dtype is None
    assert plan.describe() == ("attention: masked calls on the efficient_attention kernel (sliding-window calls keep "
                               "the dense mask: the flash kernel refused a windowed call: FlashAttention only "
                               "supports Ampere GPUs or newer.), unmasked calls on the flash_attention kernel")


def test_the_window_kernel_needs_fp16_or_bf16_and_pytorchs_flash_kernel(monkeypatch):
    assert window_kernel_refusal(torch.float32) == "the flash kernel computes in fp16 or bf16, not float32"
    monkeypatch.setattr(torch.backends.cuda, "is_flash_attention_available", lambda: False)
    assert window_kernel_refusal(torch.bfloat16) == "this PyTorch build has no flash kernel"
    monkeypatch.setattr(torch.backends.cuda, "is_flash_attention_available", lambda: True)
    monkeypatch.setattr(torch.backends.cuda, "flash_sdp_enabled", lambda: False)
    assert window_kernel_refusal(torch.float16).startswith("the flash kernel is turned off")
    monkeypatch.setattr(torch.backends.cuda, "flash_sdp_enabled", lambda: True)
    assert window_kernel_refusal(torch.bfloat16) == ""


def test_plan_attention_gives_only_the_dit_the_window_kernel_and_only_on_cuda(tiny_checkpoints, monkeypatch):
    """The DiT's band mask is the band alone; the lyric encoder's carries its padding, so its
    sliding-window calls keep their mask. Planned for CUDA here with the probes standing in (they
    are all that touches the device)."""
    planned_for = []

    def windows(plan, shape, window, device, dtype):
        planned_for.append((shape, window))
        return replace(plan, window_dtype=dtype)

    monkeypatch.setattr("acestep.models.attention.plan_windows", windows)
    probed = AttentionPlan(kernels=(("masked", "efficient_attention"), ("unmasked", "flash_attention")))
    monkeypatch.setattr("acestep.models.attention.probe_plan", lambda *shape_device_dtype: probed)
    model = transformer(tiny_checkpoints)
    assert plan_attention(model, "cpu", torch.bfloat16).window_dtype is None  # a CPU has no such kernel
    assert planned_for == []
    plan = plan_attention(model, "cuda", torch.bfloat16)
    attention = model.layers[0].self_attn
    assert plan.window_dtype == torch.bfloat16 and planned_for == [((attention.heads, attention.kv_heads,
                                                                       attention.head_dim), 16)]
    assert plan.describe() == ("attention: sliding-window calls on the flash kernel with its own window, no dense "
                               "mask (other masked calls on the efficient_attention kernel), unmasked calls on the "
                               "flash_attention kernel")
    encoder = load_acestep(tiny_checkpoints / "acestep-v15-turbo", dtype=torch.float32,
                           components=("condition_encoder",)).condition_encoder
    planned_for.clear()
    assert plan_attention(encoder, "cuda", torch.bfloat16).window_dtype is None and planned_for == []


def test_the_window_kernel_call_traces_with_its_window_into_the_backward_pass():
    """On the meta device (PyTorch's shape functions): the operator takes grouped K/V heads in
    [B, T, heads, head_dim] and autograd hands the window to its backward."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if "flash" in str(func):
                self.calls.append((str(func), kwargs.get("window_size_left"), kwargs.get("window_size_right")))
            return func(*args, **(kwargs or {}))

    query = torch.randn(2, 300, 16, 128, device="meta", dtype=torch.bfloat16, requires_grad=True)
    key, value = (torch.randn(2, 300, 8, 128, device="meta", dtype=torch.bfloat16, requires_grad=True)
                  for _ in range(2))
    with Record() as record:
        out = windowed_flash_attention(query, key, value, 128, 128 ** -0.5)
        out.sum().backward()
    assert out.shape == query.shape and key.grad.shape == key.shape
    assert record.calls == [("aten._flash_attention_forward.default", 128, 128),
                            ("aten._flash_attention_backward.default", 128, 128)]


def test_the_window_kernel_call_compiles_to_one_graph_for_every_length():
    """torch.compile (dynamo and AOT autograd, for dynamic shapes as the trainer compiles its blocks)
    takes the call whole, forward and backward, and a new length reuses the graph."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda q, k, v: windowed_flash_attention(q * 2, k, v, 128, 0.1), backend=counter,
                             dynamic=True, fullgraph=True)
    for length in (300, 310):
        query = torch.randn(2, length, 16, 128, device="meta", dtype=torch.bfloat16, requires_grad=True)
        key, value = (torch.randn(2, length, 8, 128, device="meta", dtype=torch.bfloat16, requires_grad=True)
                      for _ in range(2))
        compiled(query, key, value).sum().backward()
        assert query.grad.shape == query.shape and value.grad.shape == value.shape
    assert counter.frame_count == 1
    torch._dynamo.reset()
