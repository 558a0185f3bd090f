"""Regional compilation of the transformer's blocks (`run.compile`).

Each block is compiled on its own: the blocks share their code, so the graphs compiled for one
serve all of them, and what lies between them (embeddings, the output layer) stays eager. The
whole model compiled instead gained nothing on the H200 (2026-11-26, its graph broken at every
block by the re-entrant checkpoint of that time); compiling one block's code rather than a graph
of all 24 is what keeps compiling short (PyTorch's regional compilation recipe).

What a run feeds the blocks changes from batch to batch: the condition's length (lyric and caption
tokens) nearly always, the latent frames when a song is shorter than the crop, the batch when an
epoch's last batch is short. A block compiled for the shapes it first sees (torch.compile's default)
compiles again for each new size, and once its code has `torch._dynamo.config.recompile_limit` (8)
graphs it runs eagerly for the rest of the run, with a warning in the log. On the tiny model that
happened in the third batch of a run, after two batches whose conditions differed in length.

So the blocks are compiled for dynamic shapes from the start, and a run needs one graph for each
combination of: sliding-window layer or not (an attention mask or none), the first block or a later
one (its input needs no gradient), checkpointed or not (with gradient checkpointing a block runs
torch's checkpoint inside its graph: `acestep.training.recompute`), training or evaluation
(validation), and a batch of one or of more (PyTorch specialises a size of 1). That makes 12 graphs
in the test of a run with all of them (14 when the checkpoint was re-entrant, around the compiled
blocks: a graph without grad for the forward pass, one with grad for the recomputation);
`BLOCK_GRAPH_LIMIT` leaves room above that. Previews run eagerly (`eagerly`): their adapter
strengths, input casts and batches would each compile graphs that serve a few seconds of sampling.
Should torch still give up on the blocks, it only logs it; `reporting_fallbacks` turns that into a
warning of the run, as it does inductor's warnings that it runs a compiled graph without recording
it as a CUDA graph (`run.cuda_graphs`: a mutated input, an op it cannot capture, too many
re-recordings), which would otherwise leave a run as slow as with compile alone without a word.

PEFT's DoRA layers ask `peft.utils.integrations.dequantize_module_weight` for their base weight,
which tests `type(weight).__module__`, something dynamo cannot trace: each DoRA layer broke its
block's graph (25 breaks in a block with DoRA on attention). The trainer's base weights are never
quantized, so inside compiled code that function is replaced by what it returns for them, the
layer's weight (`_trace_base_weights_as_is`), and DoRA blocks compile whole. With gradient
checkpointing a DoRA layer broke the checkpoint traced into its block ("HOP: Unsafe side effect"):
in training mode PEFT clears the layer's cache of DoRA weights (`DoraLinearLayer._cache_clear`),
a mutation of a dict from outside the checkpoint that dynamo would have to replay in the
recomputation. The trainer never fills that cache (PEFT's `ENABLE_DORA_CACHING` is off), so the
replay is of clearing an empty dict, and `compile_blocks` lets dynamo skip it
(`skip_fwd_side_effects_in_bwd_under_checkpoint`, as torchtitan sets it for compiled blocks).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import sys
from collections.abc import Callable, Iterable, Iterator

import torch

from acestep.errors import TrainingError

BLOCK_GRAPH_LIMIT = 32  # graphs of the block's code before torch.compile gives up on it (its default: 8)
SKIP_SIDE_EFFECTS = "skip_fwd_side_effects_in_bwd_under_checkpoint"  # a dynamo setting (module docstring)


def check_compile_support(accelerator: str) -> None:
    """Raise TrainingError naming the fix when torch.compile cannot generate kernels for
    `accelerator` (cuda, mps, cpu): on a CUDA GPU inductor writes Triton kernels, and Triton is not
    part of torch on Windows."""
    if accelerator == "cuda" and importlib.util.find_spec("triton") is None:
        install = ("python -m pip install triton-windows" if sys.platform == "win32" else
                   "reinstall torch's CUDA build (install.sh), which brings Triton")
        raise TrainingError(f"run.compile needs Triton to compile for the GPU, and this Python has none: {install}, "
                            "or set run.compile=false.")


def check_cuda_graphs_support(accelerator: str) -> None:
    """Raise TrainingError naming the fix when `run.cuda_graphs` cannot record on `accelerator`:
    CUDA graphs exist on CUDA GPUs alone, and elsewhere torch.compile would quietly skip them."""
    if accelerator != "cuda":
        raise TrainingError(f"run.cuda_graphs records CUDA graphs, which need a CUDA GPU; this run's accelerator is "
                            f"{accelerator}: set run.cuda_graphs=false.")


def compile_blocks(transformer: torch.nn.Module, backend: str = "inductor", cuda_graphs: bool = False) -> None:
    """torch.compile each block of `transformer.layers` in place, for dynamic shapes, raise
    torch's recompile limit to `BLOCK_GRAPH_LIMIT` and let the checkpoint traced into a block skip
    replaying its side effects (process-wide settings; never undone; module docstring).
    `backend`: torch.compile's; "aot_eager" traces the same graphs without generating kernels.
    `cuda_graphs` (inductor only): the blocks' kernels are recorded as CUDA graphs, one for each
    new shape, and replayed (mode "reduce-overhead"); each call of `transformer` then begins a new
    step of the graphs (`_begin_graph_step`), and torch's warning about many recorded sizes is off."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, BLOCK_GRAPH_LIMIT)
    if hasattr(torch._dynamo.config, SKIP_SIDE_EFFECTS):  # torch 2.13 has it; without it DoRA's checkpoint runs eagerly
        setattr(torch._dynamo.config, SKIP_SIDE_EFFECTS, True)  # DoRA's cache clearing (module docstring)
    _trace_base_weights_as_is()
    mode = {"mode": "reduce-overhead"} if cuda_graphs else {}
    for block in transformer.layers:
        block.compile(dynamic=True, backend=backend, **mode)
    if cuda_graphs:
        transformer.register_forward_pre_hook(_begin_graph_step)
        # A run records graphs for each condition length its songs have, which the start message
        # says; torch would warn again at every new size past its 8th (a process-wide setting).
        torch._inductor.config.triton.cudagraph_dynamic_shape_warn_limit = None


def needs_gradient_buffers(cuda_graphs: bool, gradient_accumulation: int) -> bool:
    """Whether the adapter's gradients must live in buffers of their own (`allocate_gradient_buffers`):
    with CUDA graphs and gradient accumulation. The blocks' backward graphs hand each gradient over
    in the graphs' memory; a parameter without a `.grad` takes that tensor as its gradient, and the
    next micro-batch's replay overwrites it (torch then stops the run with "accessing gradient
    tensor output of CUDAGraphs that has been overwritten by a subsequent run"). A parameter that
    has a `.grad` adds the new gradient into it, leaving the graphs' memory free. Without
    accumulation each step's gradients are used, and set to None, before the next replay."""
    return cuda_graphs and gradient_accumulation > 1


def allocate_gradient_buffers(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Give each of `parameters` that has no gradient a zeroed one, allocated here, outside any
    graph; the caller then zeroes gradients in place (`zero_grad(set_to_none=False)`) instead of
    dropping them, so each parameter keeps its buffer for the whole run."""
    for parameter in parameters:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)


def _begin_graph_step(module: torch.nn.Module, args: tuple) -> None:
    """Before each forward pass of the transformer: the outputs the graphs gave in earlier passes
    are consumed (the trainer runs each pass's backward before the next pass), so their memory
    may be reused. Without the mark torch cannot tell a new step from a second forward pass, and
    replays the graphs the slow way (the H200's "Unable to hit fast path of CUDAGraphs" warning)."""
    torch.compiler.cudagraph_mark_step_begin()


@functools.cache  # once per process: dynamo keeps one substitute per function
def _trace_base_weights_as_is() -> None:
    """Inside compiled code, PEFT's `dequantize_module_weight(module)` is `module.weight`: what it
    returns for an unquantized layer, without the type check dynamo cannot trace (module docstring)."""
    from peft.utils.integrations import dequantize_module_weight

    @torch._dynamo.substitute_in_graph(dequantize_module_weight)
    def base_weight(module: torch.nn.Module) -> torch.nn.Parameter:
        return module.weight


@contextlib.contextmanager
def eagerly() -> Iterator[None]:
    """Inside the block, compiled modules run their eager code and compile nothing."""
    with torch.compiler.set_stance("force_eager"):
        yield


class _FallbackReport(logging.Handler):
    """Passes torch.compile's "hit config.recompile_limit" warning on as one line."""

    def __init__(self, report: Callable[[str], None]):
        super().__init__(logging.WARNING)
        self.report = report

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, str) and record.msg.startswith("torch._dynamo hit config.") \
                and isinstance(record.args, tuple) and len(record.args) >= 3:
            limit_type, limit, function = record.args[:3]
            self.report(f"torch.compile gave up on {function} after {limit} graphs ({limit_type}): it runs "
                        "uncompiled from here on, so steps are slower; the run goes on. Please report it with the "
                        "run's config.toml.")


class _GraphSkipReport(logging.Handler):
    """Passes inductor's warnings that a compiled function runs without CUDA graphs ("skipping
    cudagraphs due to ...") on, once for each reason (torch may give one for each graph and shape)."""

    def __init__(self, report: Callable[[str], None]):
        super().__init__(logging.WARNING)
        self.report, self.reasons = report, set()

    def emit(self, record: logging.LogRecord) -> None:
        reason = (record.getMessage().strip().splitlines() or ["no reason given"])[0][:300]
        if reason in self.reasons:
            return
        self.reasons.add(reason)
        self.report(f"run.cuda_graphs: torch.compile runs some of the blocks' graphs without CUDA graphs "
                    f"(\"{reason}\"): those graphs launch their kernels one by one, as with run.compile alone; the run "
                    "goes on. Please report it with the run's config.toml.")


# inductor's logger of why it records no CUDA graph (torch._inductor.cudagraph_utils.cudagraphs_log,
# an artifact logger: its warnings reach handlers whatever TORCH_LOGS says), named so that a handler
# can be added before inductor is imported
CUDA_GRAPH_SKIP_LOGGER = "torch._inductor.cudagraph_utils.__cudagraphs"


@contextlib.contextmanager
def reporting_fallbacks(report: Callable[[str], None]) -> Iterator[None]:
    """Inside the block, torch.compile giving up on a function (it then runs that function eagerly),
    or inductor recording no CUDA graph for a compiled graph (`run.cuda_graphs`), calls `report`
    with a message saying so."""
    handlers = ((logging.getLogger("torch._dynamo.convert_frame"), _FallbackReport(report)),
                (logging.getLogger(CUDA_GRAPH_SKIP_LOGGER), _GraphSkipReport(report)))
    for logger, handler in handlers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger, handler in handlers:
            logger.removeHandler(handler)
