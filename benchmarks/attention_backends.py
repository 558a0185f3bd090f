"""Which attention kernel does each attention call of the DiT get, and what would the others cost?

    env/bin/python benchmarks/attention_backends.py --size 2b --batch 8 --seconds 60   # on a GPU
    env/bin/python benchmarks/attention_backends.py --size 2b --batch 8 --seconds 60 --masked-only  # its window
    env/bin/python benchmarks/attention_backends.py --size tiny --seconds 2             # CPU: checks the script

One forward of the transformer (random weights, the benchmark's condition length, attention not
planned) records every `scaled_dot_product_attention` call as diffusers makes it: its shapes,
dtype, mask and GQA flag. First it prints the trainer's plan for this device
(`acestep.models.attention`: which calls get their K/V heads repeated, and the kernel each gets). For each
distinct call (ACE-Step has three: self-attention with the dense sliding-window mask, full
self-attention, cross-attention) it prints the kernel PyTorch's dispatcher chooses
(`torch._fused_sdp_choice`), and the forward + backward time of the call as made, under each
kernel forced in turn (flash, efficient, cuDNN, math: "unsupported" when the kernel refuses the
call), and of two rewrites of it: K/V heads repeated to the query heads (no GQA flag), and that
with a boolean mask instead of the additive one. The step profile of the H200 (bmm, mul and copy
kernels taking two thirds of the GPU time) points at a math fallback; this script says which call
falls back and what a rewrite would gain, in one short GPU run.

For the masked call it first times the trainer's path where a CUDA GPU's plan allows it: PyTorch's
flash kernel with its own window (`acestep.models.attention.windowed_flash_attention`, no dense
mask), then FlexAttention (`torch.nn.attention.flex_attention`, compiled) with a block mask made
from the call's own mask. Both skip the blocks of keys the sliding window leaves out (the flex row
says what share), where the SDPA kernels read the whole dense mask. Each row also gives the
largest difference of its output from the call as made, in the call's dtype. A CPU has neither
the flash kernel nor FlexAttention's backward pass: those rows then say "unsupported" for the time
(the flex row still gives the difference).
"""

from __future__ import annotations

import argparse
import contextlib
import functools

import torch
import torch.nn.functional as F
from common import CONDITION_TOKENS, SIZES, is_out_of_memory, model_config, random_transformer, timed
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from acestep.models.attention import plan_for_shape, windowed_flash_attention
from acestep.models.config import parse_model_config
from acestep.training.objective import context_latents
from acestep.training.plan import FRAMES_PER_SECOND

FORCED = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
          "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}


def describe_call(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                  enable_gqa=False) -> dict:
    """The facts of one SDPA call that decide its kernel (tensors are [batch, heads, seq, dim])."""
    kind = "cross" if key.shape[-2] != query.shape[-2] else ("self, masked" if attn_mask is not None else "self")
    return {"kind": kind, "query": tuple(query.shape), "key": tuple(key.shape), "dtype": query.dtype,
            "mask": None if attn_mask is None else (tuple(attn_mask.shape), attn_mask.dtype),
            "enable_gqa": bool(enable_gqa), "scale": scale, "is_causal": bool(is_causal),
            "strides": tuple(query.stride()), "attn_mask": attn_mask}


def record_calls(size: str, batch: int, seconds: float, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """Distinct SDPA calls of one forward of the transformer of `size` (the first of each kind)."""
    config = parse_model_config(model_config(size))
    model = random_transformer(config, device, dtype)
    frames = int(seconds * FRAMES_PER_SECOND)
    latent = 64  # latent channels; the context is [silence latent ‖ chunk mask], 128
    silence = torch.zeros(1, frames, latent, device=device, dtype=dtype)
    condition_width = model.condition_embedder.in_features
    calls: dict[str, dict] = {}
    original = F.scaled_dot_product_attention

    def recorder(query, key, value, *args, **kwargs):
        names = ("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
        described = describe_call(query, key, value, **dict(zip(names, args, strict=False)), **kwargs)
        calls.setdefault(described["kind"], described)
        return original(query, key, value, *args, **kwargs)

    F.scaled_dot_product_attention = recorder
    try:
        with torch.no_grad():
            model(hidden_states=torch.randn(batch, frames, latent, device=device, dtype=dtype),
                  timestep=torch.full((batch,), 0.5, device=device, dtype=dtype),
                  timestep_r=torch.full((batch,), 0.5, device=device, dtype=dtype),
                  encoder_hidden_states=torch.randn(batch, CONDITION_TOKENS, condition_width, device=device,
                                                    dtype=dtype),
                  context_latents=context_latents(silence, frames, batch))
    finally:
        F.scaled_dot_product_attention = original
    del model
    return list(calls.values())


def make_inputs(call: dict, device: torch.device, bool_mask: bool = False):
    """Fresh leaf q, k, v of a recorded call's shapes and its keyword arguments (the additive mask
    as a boolean one when `bool_mask`)."""
    q = torch.randn(call["query"], device=device, dtype=call["dtype"], requires_grad=True)
    k = torch.randn(call["key"], device=device, dtype=call["dtype"], requires_grad=True)
    v = torch.randn(call["key"], device=device, dtype=call["dtype"], requires_grad=True)
    mask = call["attn_mask"]
    kwargs = {"attn_mask": mask == 0 if bool_mask and mask is not None else mask, "scale": call["scale"],
              "enable_gqa": call["enable_gqa"]}
    return q, k, v, kwargs


def repeat_kv(q, k, v, kwargs: dict, expand_kv: bool):
    """The call with K/V heads repeated to the query heads and no GQA flag, when `expand_kv`."""
    if not (expand_kv and kwargs["enable_gqa"]):
        return q, k, v, kwargs
    repeats = q.shape[1] // k.shape[1]
    return q, k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1), {**kwargs, "enable_gqa": False}


def run_once(inputs, expand_kv: bool) -> None:
    q, k, v, kwargs = repeat_kv(*inputs, expand_kv)
    F.scaled_dot_product_attention(q, k, v, **kwargs).float().sum().backward()


def chosen_kernel(call: dict, device: torch.device, expand_kv: bool = False, bool_mask: bool = False) -> str:
    q, k, v, kwargs = repeat_kv(*make_inputs(call, device, bool_mask), expand_kv)
    try:
        index = torch._fused_sdp_choice(q, k, v, kwargs["attn_mask"], 0.0, False, scale=kwargs["scale"],
                                        enable_gqa=kwargs["enable_gqa"])
    except (RuntimeError, AttributeError, TypeError) as exc:
        return f"? ({type(exc).__name__})"
    return SDPBackend(index).name.lower()


@functools.cache
def _compiled_flex_attention():
    return torch.compile(flex_attention)


def skipped_share(block_mask, length: int) -> float:
    """The share of (query block, key block) pairs of a `length` x `length` call that `block_mask`
    skips (torch's own `sparsity()` counts against its padded size, below zero for short calls)."""
    computed = block_mask.kv_num_blocks.sum().item()
    if block_mask.full_kv_num_blocks is not None:
        computed += block_mask.full_kv_num_blocks.sum().item()
    blocks = -(-length // block_mask.BLOCK_SIZE[0]) * -(-length // block_mask.BLOCK_SIZE[1])
    return 1 - computed / blocks


def flex_row(call: dict, device: torch.device, repeats: int) -> tuple[str, str, str]:
    """(variant, kernel, ms fwd+bwd) of the masked call through compiled FlexAttention with a block
    mask made from the call's mask (module docstring): the variant names the share of key blocks
    skipped and the largest difference of the output from the call as made."""
    q, k, v, kwargs = make_inputs(call, device)
    allowed = kwargs["attn_mask"][0, 0] == 0 if kwargs["attn_mask"].dtype != torch.bool else kwargs["attn_mask"][0, 0]
    length = q.shape[-2]
    block_mask = create_block_mask(lambda b, h, q_index, kv_index: allowed[q_index, kv_index], None, None, length,
                                   length, device=str(device))
    flex = _compiled_flex_attention()
    with torch.no_grad():  # detached: FlexAttention has no backward pass on a CPU, and refuses inputs that need one
        expected = F.scaled_dot_product_attention(q.detach(), k.detach(), v.detach(), **kwargs)
        got = flex(q.detach(), k.detach(), v.detach(), block_mask=block_mask, scale=kwargs["scale"],
                   enable_gqa=kwargs["enable_gqa"])
    difference = (got.float() - expected.float()).abs().max().item()
    name = f"flex, {100 * skipped_share(block_mask, length):.0f}% blocks skipped, max diff {difference:.1e}"

    def step():
        flex(q, k, v, block_mask=block_mask, scale=kwargs["scale"],
             enable_gqa=kwargs["enable_gqa"]).float().sum().backward()

    try:
        seconds = timed(device, repeats, step)
    except (RuntimeError, NotImplementedError) as exc:
        return name, "flex_attention", "out of memory" if is_out_of_memory(exc) else "unsupported"
    return name, "flex_attention", f"{seconds * 1000:.3f}"


def window_row(call: dict, device: torch.device, repeats: int, window: int) -> tuple[str, str, str]:
    """(variant, kernel, ms fwd+bwd) of the masked call on the flash kernel with its own `window`
    and no mask (`windowed_flash_attention`, inputs `[B, T, heads, head_dim]` as the trainer's
    processor passes them): the variant names the largest difference of the output from the call
    as made."""
    q, k, v, kwargs = make_inputs(call, device)
    sequence_major = [x.detach().transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v)]
    name = f"flash, own window {window}"
    try:
        with torch.no_grad():
            expected = F.scaled_dot_product_attention(q, k, v, **kwargs).transpose(1, 2)
            got = windowed_flash_attention(*(x.detach() for x in sequence_major), window, kwargs["scale"])
        name += f", max diff {(got.float() - expected.float()).abs().max().item():.1e}"
        seconds = timed(device, repeats, lambda: windowed_flash_attention(*sequence_major, window, kwargs["scale"])
                        .float().sum().backward())
    except (RuntimeError, NotImplementedError) as exc:
        return name, "flash_attention", "out of memory" if is_out_of_memory(exc) else "unsupported"
    return name, "flash_attention", f"{seconds * 1000:.3f}"


def measure(call: dict, device: torch.device, repeats: int, window: int) -> list[tuple[str, str, str]]:
    """Rows (variant, kernel, ms fwd+bwd) for one recorded call: the flash kernel with its own
    `window` and FlexAttention first when it is masked (`window_row`, `flex_row`), then each kernel
    for the call as made and its rewrites."""
    rows = [window_row(call, device, repeats, window), flex_row(call, device, repeats)] \
        if call["attn_mask"] is not None else []
    variants = [("as called", False, False)]
    if call["enable_gqa"]:
        variants.append(("K/V repeated, no GQA flag", True, False))
    if call["attn_mask"] is not None:
        variants.append(("K/V repeated, boolean mask" if call["enable_gqa"] else "boolean mask", call["enable_gqa"],
                         True))
    for name, expand_kv, bool_mask in variants:
        chosen = chosen_kernel(call, device, expand_kv, bool_mask)
        rows.append((name, f"{chosen} (default)", _timed(call, device, repeats, expand_kv, bool_mask, None)))
        for kernel, backend in FORCED.items():
            rows.append((name, kernel, _timed(call, device, repeats, expand_kv, bool_mask, backend)))
    return rows


def _timed(call, device, repeats, expand_kv, bool_mask, backend) -> str:
    context = sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext()
    try:
        with context:
            inputs = make_inputs(call, device, bool_mask)
            seconds = timed(device, repeats, lambda: run_once(inputs, expand_kv))
    except RuntimeError as exc:
        return "out of memory" if is_out_of_memory(exc) else "unsupported"
    return f"{seconds * 1000:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=60.0, help="crop length")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per variant (median)")
    parser.add_argument("--masked-only", action="store_true",
                        help="only the masked (sliding-window) call: the flash kernel with its own window and "
                             "FlexAttention against the SDPA kernels")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    print(f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}, "
          f"{dtype}, {args.size} transformer, batch {args.batch} x {args.seconds:g} s")
    shape = parse_model_config(model_config(args.size)).transformer_kwargs()
    plan = plan_for_shape((shape["num_attention_heads"], shape["num_key_value_heads"], shape["head_dim"]), device,
                          dtype, shape["sliding_window"])  # as plan_attention plans the DiT
    print(f"the trainer's plan here: {plan.describe()}")
    calls = record_calls(args.size, args.batch, args.seconds, device, dtype)
    for call in calls if not args.masked_only else [call for call in calls if call["attn_mask"] is not None]:
        mask = "none" if call["mask"] is None else f"{list(call['mask'][0])} {call['mask'][1]}"
        print(f"\n{call['kind']} attention: query {list(call['query'])}, key/value {list(call['key'])}, "
              f"mask {mask}, enable_gqa {call['enable_gqa']}")
        print(f"  {'variant':28s} {'kernel':24s} {'ms fwd+bwd':>12s}")
        for variant, kernel, ms in measure(call, device, args.repeats, shape["sliding_window"]):
            print(f"  {variant:28s} {kernel:24s} {ms:>12s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
