"""What a training step costs the host (Python, autograd, the dispatcher), measured on a CPU.

    env/bin/python benchmarks/host_overhead.py                  # the table below, about a minute
    env/bin/python benchmarks/host_overhead.py --rounds 21 --layers 24
    env/bin/python benchmarks/host_overhead.py --compile    # and with compiled blocks, two minutes more

On a fast GPU the DiT's step is bound by the host: the H200 profile had the GPU busy 81 ms of a
444 ms step at batch 1 (RESULTS.md). This script builds the 2B DiT's structure (24 blocks,
every module, LoRA rank 4 on self and cross attention, dropout 0.1) at tiny widths, so that the
arithmetic is negligible and one forward + backward under bf16 autocast on one CPU thread takes
what the host spends issuing it. It times the ways the trainer can run the step, one change at a
time, and counts the operators each dispatches (each one is a kernel launch on a GPU):

- no checkpointing;
- gradient checkpointing as diffusers does it (`use_reentrant=False`: a pack and an unpack hook
  per saved tensor);
- gradient checkpointing as the trainer does it (`acestep.training.recompute`, re-entrant);
- the trainer's checkpointing with PEFT's input casts back on (before `Adapter.skip_input_casts`);
- and with diffusers' RoPE, which casts to fp32 and back (before `acestep.models.attention.apply_rope`);
- with `--compile`, on a fresh model: the trainer's checkpointing with its blocks compiled as
  `run.compile` compiles them (`acestep.training.compilation`, dynamic shapes, the checkpoint
  inside each block's graph), then compiled for static shapes (torch.compile's default), then with
  the re-entrant checkpoint around the compiled blocks (before `acestep.training.recompute` traced
  it into them); inductor's CPU kernels, whose arithmetic is negligible at
  these widths, stand in for a GPU's. Their first step (compiling) is printed; their operators are
  not counted (compiled kernels do not pass through the dispatcher).

Figures from a CPU are not GPU step times; they compare the host's share of one against another.
The fused RMSNorm (`acestep.models.norms`) cannot show here: on a CPU `F.rms_norm` runs the same
composite arithmetic as diffusers' RMSNorm (`op_count.py` counts it as a CUDA build runs it).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import model_config, random_transformer
from op_count import CountOperators
from variants import use_diffusers_rope, use_peft_input_casts, use_re_entrant_checkpointing, use_static_shape_compile

from acestep.models.config import parse_model_config
from acestep.training.adapters import add_adapter
from acestep.training.compilation import compile_blocks
from acestep.training.objective import context_latents
from acestep.training.recompute import enable_recompute

TINY_WIDTHS = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 16, "num_key_value_heads": 8,
               "head_dim": 8}  # the 2B model's heads and GQA groups, tiny widths


def build(layers: int):
    config = model_config("2b")
    config.update(TINY_WIDTHS, num_hidden_layers=layers, layer_types=config["layer_types"][:layers])
    transformer = random_transformer(parse_model_config(config), torch.device("cpu"), torch.bfloat16)
    adapter = add_adapter(transformer, "lora", rank=4, alpha=8.0, dropout=0.1)
    adapter.skip_input_casts()  # as the session does under mixed precision
    return transformer.train(), adapter


def make_step(transformer, frames: int = 16):
    generator = torch.Generator().manual_seed(0)
    t = torch.full((1,), 0.5)
    inputs = {"hidden_states": torch.randn(1, frames, 64, generator=generator), "timestep": t, "timestep_r": t,
              "encoder_hidden_states": torch.randn(1, 8, transformer.condition_embedder.in_features,
                                                   generator=generator),
              "context_latents": context_latents(torch.zeros(1, frames, 64), frames, 1)}

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            prediction = transformer(**inputs).sample
        prediction.float().pow(2).mean().backward()

    return step


def measure(step, rounds: int, count: bool = True) -> tuple[float, float, int | None]:
    """(seconds of the first step, median seconds per step after two warm-up steps, operators one
    step dispatches or None when not `count`)."""
    began = time.perf_counter()
    step()
    first = time.perf_counter() - began
    step()
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        step()
        times.append(time.perf_counter() - began)
    if not count:
        return first, statistics.median(times), None
    with CountOperators() as mode:
        step()
    return first, statistics.median(times), sum(mode.counts.values())


def compiled_settings(layers: int, backend: str = "inductor") -> list[tuple[str, object]]:
    """(name, step) of the trainer's checkpointed step with its blocks compiled for dynamic shapes,
    then for static shapes, then with the re-entrant checkpoint around them, each on a fresh model."""
    rows = []
    changes = (("the trainer's, compiled (dynamic)", None),
               ("the trainer's, compiled (static)", lambda model: use_static_shape_compile(model, backend=backend)),
               ("compiled, re-entrant checkpoint", use_re_entrant_checkpointing))
    for name, change in changes:
        transformer, _ = build(layers)
        enable_recompute(transformer, compiled=True)
        compile_blocks(transformer, backend=backend)
        if change is not None:
            change(transformer)
        rows.append((name, make_step(transformer)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=24, help="DiT blocks (the 2B model has 24)")
    parser.add_argument("--rounds", type=int, default=11, help="timed steps per setting (median)")
    parser.add_argument("--compile", action="store_true", help="add the step with compiled blocks (dynamic and "
                        "static shapes; compiling takes a minute or two)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend for --compile (default "
                        "inductor, as run.compile uses; aot_eager traces the same graphs without making kernels)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    transformer, adapter = build(args.layers)
    step = make_step(transformer)
    settings = [
        ("no checkpointing", lambda: transformer.disable_gradient_checkpointing()),
        ("checkpointing, diffusers' default", lambda: transformer.enable_gradient_checkpointing()),
        ("checkpointing, the trainer's", lambda: enable_recompute(transformer)),
        ("the trainer's, PEFT casts on", lambda: use_peft_input_casts(transformer)),
        ("and diffusers' RoPE", lambda: use_diffusers_rope(transformer)),
    ]
    print(f"torch {torch.__version__}, 1 CPU thread, {args.layers} blocks at tiny widths, LoRA on attention, "
          f"bf16 autocast, median of {args.rounds} steps")
    print(f"{'setting':36s} {'host ms/step':>12s} {'operators':>10s} {'first step s':>12s}")
    for name, apply in settings:
        apply()
        first, seconds, operators = measure(step, args.rounds)
        print(f"{name:36s} {seconds * 1000:12.1f} {operators:10d} {first:12.2f}")
    for name, compiled_step in compiled_settings(args.layers, args.backend) if args.compile else ():
        first, seconds, _ = measure(compiled_step, args.rounds, count=False)
        print(f"{name:36s} {seconds * 1000:12.1f} {'-':>10s} {first:12.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
