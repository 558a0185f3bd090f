"""Count the operators of one training step of the DiT without running it (no GPU, seconds).

    env/bin/python benchmarks/op_count.py --size 2b --batch 4 --seconds 60
    env/bin/python benchmarks/op_count.py --size 2b --batch 4 --seconds 60 --diffusers-layout
    env/bin/python benchmarks/op_count.py --size 2b --batch 4 --seconds 60 --diffusers-rmsnorm --diffusers-rope

The transformer is built on PyTorch's meta device (shapes only, no memory, no arithmetic) with
the LoRA adapter, gradient checkpointing on, in bf16, and one forward and backward of a batch is
dispatched under a counting mode. On a GPU nearly every counted operator that is not a view is one
kernel launch, and the H200 profile shows the step is bound by launching them; the count is the
proxy a CPU can measure. Attention counts as the math kernel here (the meta device has no fused
attention), so its `bmm` are counted that way whatever a GPU picks. `F.rms_norm` counts as the one
fused operator a CUDA build runs (`cuda_rms_norm_dispatch`; the meta device would otherwise
decompose it as the CPU does).
"""

from __future__ import annotations

import argparse
from collections import Counter
from contextlib import contextmanager

import torch
from common import CONDITION_TOKENS, SIZES, model_config, random_transformer
from torch.utils._python_dispatch import TorchDispatchMode
from variants import use_diffusers_layout, use_diffusers_rms_norm, use_diffusers_rope

from acestep.models.config import parse_model_config
from acestep.training.adapters import add_adapter
from acestep.training.recompute import enable_recompute
from acestep.training.plan import FRAMES_PER_SECOND

# Operators that only make views (no kernel on a GPU).
VIEWS = {"detach", "view", "t", "_unsafe_view", "expand", "permute", "unsqueeze", "transpose", "slice", "split",
         "unbind", "as_strided", "select", "squeeze", "alias", "_reshape_alias", "unflatten", "split_with_sizes"}
COPIES = ("clone", "copy_", "_to_copy")


class CountOperators(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


@contextmanager
def cuda_rms_norm_dispatch():
    """Inside the block, `F.rms_norm` on the meta device dispatches as on a CUDA build: one
    `_fused_rms_norm` forward and one `_fused_rms_norm_backward` (which has a meta kernel already)."""

    def fused_rms_norm(x, normalized_shape, weight, eps):
        rstd_shape = tuple(x.shape[:x.dim() - len(normalized_shape)]) + (1,) * len(normalized_shape)
        return torch.empty_like(x), x.new_empty(rstd_shape, dtype=torch.float32)

    library = torch.library.Library("aten", "IMPL")
    # torch.library.impl refuses a meta kernel for an op with a composite kernel in core; the
    # registration below is what it would make, and it lasts only as long as the block
    library.m.impl("_fused_rms_norm", "Meta", fused_rms_norm, False)
    try:
        yield
    finally:
        library._destroy()


def count_step(size: str, batch: int, seconds: float, rank: int = 64, diffusers_layout: bool = False,
               diffusers_rms_norm: bool = False, diffusers_rope: bool = False) -> Counter:
    """Operators of one forward + backward of the `size` DiT with a LoRA of `rank` on attention."""
    device, dtype = torch.device("meta"), torch.bfloat16
    model = random_transformer(parse_model_config(model_config(size)), device, dtype)
    adapter = add_adapter(model, "lora", rank=rank, alpha=2.0 * rank)
    torch.nn.Module.to(model, dtype)  # the meta device has no autocast: the adapter in bf16 as well
    adapter.skip_input_casts()  # as the session does under mixed precision
    enable_recompute(model)  # the trainer's checkpointing (acestep.training.recompute)
    model.train()
    if diffusers_layout:
        use_diffusers_layout(model)
    if diffusers_rms_norm:
        use_diffusers_rms_norm(model)
    if diffusers_rope:
        use_diffusers_rope(model)
    frames = int(seconds * FRAMES_PER_SECOND)
    t = torch.full((batch,), 0.5, device=device, dtype=dtype)
    inputs = {"hidden_states": torch.empty(batch, frames, 64, device=device, dtype=dtype), "timestep": t,
              "timestep_r": t, "context_latents": torch.empty(batch, frames, 128, device=device, dtype=dtype),
              "encoder_hidden_states": torch.empty(batch, CONDITION_TOKENS, model.condition_embedder.in_features,
                                                   device=device, dtype=dtype)}
    with cuda_rms_norm_dispatch(), CountOperators() as mode:
        model(**inputs).sample.float().pow(2).mean().backward()
    return mode.counts


def summary(counts: Counter) -> dict[str, int]:
    return {"operators": sum(counts.values()),
            "kernels (not views)": sum(n for name, n in counts.items() if name not in VIEWS),
            "bmm": counts["bmm"], "mm": counts["mm"] + counts["addmm"], "copies": sum(counts[n] for n in COPIES)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="2b")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--diffusers-layout", action="store_true",
                        help="diffusers' transposed residual stream (without acestep.models.layout)")
    parser.add_argument("--diffusers-rmsnorm", action="store_true",
                        help="diffusers' RMSNorm forward (without acestep.models.norms)")
    parser.add_argument("--diffusers-rope", action="store_true",
                        help="diffusers' RoPE in fp32 (without acestep.models.attention.apply_rope)")
    parser.add_argument("--top", type=int, default=15, help="most frequent operators to list")
    args = parser.parse_args(argv)
    counts = count_step(args.size, args.batch, args.seconds, args.rank, args.diffusers_layout, args.diffusers_rmsnorm,
                        args.diffusers_rope)
    layout = "diffusers' layout" if args.diffusers_layout else "sequence-major stream"
    norm = "diffusers' RMSNorm" if args.diffusers_rmsnorm else "fused RMSNorm"
    rope = "diffusers' RoPE" if args.diffusers_rope else "RoPE in bf16"
    print(f"one training step, {args.size} DiT, LoRA rank {args.rank}, batch {args.batch} x {args.seconds:g} s, "
          f"gradient checkpointing, {layout}, {norm}, {rope}:")
    for name, value in summary(counts).items():
        print(f"  {name:20s} {value:7d}")
    print("most frequent:", ", ".join(f"{name} {n}" for name, n in counts.most_common(args.top)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
