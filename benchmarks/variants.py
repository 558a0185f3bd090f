"""Model variants the GPU benchmarks compare against the trainer's model, to measure one change at
a time (`VARIANTS`: `training_step.py`'s options and the grid's cell flags; `op_count.py
--diffusers-layout`):

- `use_diffusers_layout` (`--diffusers-layout`, `:difflayout`): undo
  `acestep.models.layout.keep_sequence_major`, the residual stream transposed in memory as
  diffusers leaves it (the state before that change);
- `use_diffusers_rms_norm` (`--diffusers-rmsnorm`, `:diffnorm`): every RMSNorm computed by
  diffusers' eight-operator forward instead of `F.rms_norm` (`acestep.models.norms`; the state
  before that change);
- `use_diffusers_rope` (`--diffusers-rope`, `:diffrope`): RoPE by diffusers' `apply_rotary_emb`
  (in fp32, cast back) instead of `acestep.models.attention.apply_rope` (in the activation dtype;
  the state before that change);
- `use_peft_input_casts` (`--peft-casts`, `:peftcast`): PEFT's cast of each adapted layer's input
  to fp32 turned back on (the state before `Adapter.skip_input_casts`);
- `use_diffusers_checkpointing` (`--diffusers-checkpointing`, `:diffckpt`, with checkpointing on):
  diffusers' hook-based gradient checkpointing instead of `acestep.training.recompute`'s
  re-entrant one (the state before that change);
- `use_half_checkpointing` (`--half-checkpointing`, `:halfckpt`, with checkpointing on): only the
  first half of the blocks checkpointed (`run.gradient_checkpointing_ratio = 0.5`), the others
  keeping their activations: what the ratio trades, time against memory, beside `:ckpt` (all) and
  no checkpointing;
- `use_re_entrant_checkpointing` (`--re-entrant-checkpointing`, `:reentrantckpt`, with
  checkpointing and compile on): compiled blocks checkpointed re-entrantly from outside their
  graphs, instead of inside them (`acestep.training.recompute`; the state before that change);
- `use_dense_window_mask` (`--dense-window-mask`, `:densewindow`, on a GPU whose plan runs the DiT's
  sliding-window calls on the flash kernel with its own window): those calls with their dense band
  mask again, on the kernel PyTorch's dispatcher picks (the state before that change);
- `use_static_shape_compile` (`--static-compile`, `:staticcompile`, with compile on): the blocks
  compiled for the shapes they first see, torch.compile's default, instead of
  `acestep.training.compilation`'s dynamic shapes (the state before that change; the benchmark's
  shapes are fixed, so this measures what dynamic-shape kernels cost, not the recompiles).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from diffusers.models.embeddings import apply_rotary_emb


def use_diffusers_layout(model: torch.nn.Module) -> None:
    """Remove the sequence-major hook from every patchify convolution in `model`."""
    from acestep.models.layout import _sequence_major

    convs = [m.proj_in_conv for m in model.modules() if hasattr(m, "proj_in_conv")]
    if not convs:
        raise ValueError("no transformer with proj_in_conv in the model")
    for conv in convs:
        for key in [k for k, hook in conv._forward_hooks.items() if hook is _sequence_major]:
            del conv._forward_hooks[key]


def _undo_subclass(model: torch.nn.Module, subclass: type) -> int:
    """Give every module of `model` that is a `subclass` instance its base class back (the
    trainer's swaps only change `forward`); returns how many."""
    modules = [m for m in model.modules() if isinstance(m, subclass)]
    for module in modules:
        module.__class__ = subclass.__base__
    return len(modules)


def use_diffusers_rms_norm(model: torch.nn.Module) -> int:
    """Compute every `FusedRMSNorm` of `model` with diffusers' own `RMSNorm.forward` again; returns how many."""
    from acestep.models.norms import FusedRMSNorm

    return _undo_subclass(model, FusedRMSNorm)


def _diffusers_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return apply_rotary_emb(x, (cos, sin), use_real=True, use_real_unbind_dim=-2, sequence_dim=1)


def use_diffusers_rope(model: torch.nn.Module) -> int:
    """Apply RoPE with diffusers' `apply_rotary_emb` in every attention processor of `model`; returns how many."""
    processors = _processors(model)
    for processor in processors:
        processor.rope = _diffusers_rope
    return len(processors)


def _processors(model: torch.nn.Module) -> list:
    """The distinct `AceStepAttentionProcessor`s of `model`'s attention layers."""
    from acestep.models.attention import AceStepAttentionProcessor

    processors = {id(m.processor): m.processor for m in model.modules()
                  if isinstance(getattr(m, "processor", None), AceStepAttentionProcessor)}
    return list(processors.values())


def use_dense_window_mask(model: torch.nn.Module) -> int:
    """Give the sliding-window calls of `model`'s attention processors their dense band mask again
    where the plan runs them on the flash kernel with its own window; returns how many processors.
    Raises ValueError where no plan does (the variant needs that plan: a CUDA GPU with the kernel)."""
    processors = [p for p in _processors(model) if p.plan.window_dtype is not None]
    if not processors:
        raise ValueError("the dense-window-mask variant needs a plan with sliding-window calls on the flash kernel "
                         "(a CUDA GPU with PyTorch's flash kernel, bf16 or fp16)")
    for processor in processors:
        processor.plan = replace(processor.plan, window_dtype=None, dense_window_because="benchmark variant")
    return len(processors)


def use_peft_input_casts(model: torch.nn.Module) -> int:
    """Let every PEFT layer of `model` cast its input to the adapter's dtype again; returns how many."""
    from acestep.inference.strength import peft_layers

    layers = peft_layers(model)
    for layer in layers:
        layer.cast_input_dtype_enabled = True
    return len(layers)


def use_diffusers_checkpointing(model: torch.nn.Module) -> int:
    """Checkpoint the blocks of every checkpointed diffusers model in `model` the way diffusers does
    by default (`use_reentrant=False`); returns how many models. Raises ValueError when none has
    gradient checkpointing on (the variant needs it)."""
    from diffusers.models.modeling_utils import ModelMixin

    models = [m for m in model.modules() if isinstance(m, ModelMixin) and m.is_gradient_checkpointing]
    if not models:
        raise ValueError("the diffusers-checkpointing variant needs gradient checkpointing on (:ckpt)")
    if _compiled_blocks(model):  # they checkpoint inside their graphs, which diffusers' hook would repeat
        raise ValueError("the diffusers-checkpointing variant measures the eager blocks: not with compile (:compile)")
    for checkpointed in models:
        checkpointed.enable_gradient_checkpointing()
    return len(models)


def use_static_shape_compile(model: torch.nn.Module, backend: str = "inductor") -> int:
    """Compile every compiled block of `model` again for static shapes (torch.compile's default)
    with `backend`; returns how many. Raises ValueError when no block is compiled (the variant
    needs compile on)."""
    blocks = _needs_compiled_blocks(model, "static-compile")
    for block in blocks:
        block.compile(backend=backend)
    return len(blocks)


def _compiled_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if getattr(m, "_compiled_call_impl", None) is not None]


def _needs_compiled_blocks(model: torch.nn.Module, variant: str) -> list[torch.nn.Module]:
    """`_compiled_blocks(model)`; raises ValueError naming `variant` when there are none."""
    blocks = _compiled_blocks(model)
    if not blocks:
        raise ValueError(f"the {variant} variant needs compile on (:compile)")
    return blocks


def _checkpointed_transformer(model: torch.nn.Module, variant: str) -> torch.nn.Module:
    transformers = [m for m in model.modules()
                    if hasattr(m, "layers") and getattr(m, "is_gradient_checkpointing", False)]
    if not transformers:
        raise ValueError(f"the {variant} variant needs gradient checkpointing on (:ckpt)")
    return transformers[0]


def use_half_checkpointing(model: torch.nn.Module) -> int:
    """Checkpoint only the first half of the blocks of `model`'s transformer (the trainer's
    `run.gradient_checkpointing_ratio = 0.5`), in the form the blocks had; returns how many. Raises
    ValueError when gradient checkpointing is off (the variant needs it)."""
    from acestep.training.recompute import RECOMPUTE_FLAG, enable_recompute

    transformer = _checkpointed_transformer(model, "half-checkpointing")
    enable_recompute(transformer, 0.5, compiled=bool(_compiled_blocks(transformer)))
    return sum(getattr(block, RECOMPUTE_FLAG) for block in transformer.layers)


def use_re_entrant_checkpointing(model: torch.nn.Module) -> int:
    """Checkpoint `model`'s compiled blocks re-entrantly from outside their graphs, as the trainer
    did before it traced the checkpoint into them; returns how many blocks are checkpointed. Raises
    ValueError without gradient checkpointing or compile (the variant needs both)."""
    from acestep.training.recompute import RECOMPUTE_FLAG, enable_recompute

    transformer = _checkpointed_transformer(model, "re-entrant-checkpointing")
    _needs_compiled_blocks(transformer, "re-entrant-checkpointing")
    count = sum(getattr(block, RECOMPUTE_FLAG) for block in transformer.layers)
    enable_recompute(transformer, count / len(transformer.layers), compiled=False)  # the same blocks
    return count


@dataclass(frozen=True)
class Variant:
    """One change to measure: its grid cell flag, `training_step.py` option, table note and help."""

    flag: str
    option: str
    note: str
    help: str
    apply: Callable[[torch.nn.Module], object]


VARIANTS = (
    Variant("difflayout", "--diffusers-layout", "diffusers layout",
            "run the model with diffusers' transposed residual stream (without acestep.models.layout), to "
            "measure what that change gains", use_diffusers_layout),
    Variant("diffnorm", "--diffusers-rmsnorm", "diffusers RMSNorm",
            "compute the model's RMSNorms with diffusers' forward instead of F.rms_norm (without "
            "acestep.models.norms), to measure what that change gains", use_diffusers_rms_norm),
    Variant("diffrope", "--diffusers-rope", "diffusers RoPE",
            "apply RoPE with diffusers' apply_rotary_emb (in fp32) instead of acestep.models.attention.apply_rope "
            "(in the activation dtype), to measure what that change gains", use_diffusers_rope),
    Variant("peftcast", "--peft-casts", "PEFT input casts",
            "let PEFT cast each adapted layer's input to fp32 again (without Adapter.skip_input_casts), to "
            "measure what skipping them gains", use_peft_input_casts),
    Variant("diffckpt", "--diffusers-checkpointing", "diffusers' checkpointing",
            "checkpoint the blocks with diffusers' hook-based default instead of the trainer's re-entrant "
            "form (needs --gradient-checkpointing), to measure what that change gains",
            use_diffusers_checkpointing),
    Variant("halfckpt", "--half-checkpointing", "half the blocks checkpointed",
            "checkpoint only the first half of the blocks (run.gradient_checkpointing_ratio = 0.5; needs "
            "--gradient-checkpointing), to measure what the ratio trades", use_half_checkpointing),
    Variant("reentrantckpt", "--re-entrant-checkpointing", "re-entrant checkpointing of compiled blocks",
            "checkpoint the compiled blocks re-entrantly from outside their graphs instead of inside them (needs "
            "--gradient-checkpointing and --compile), to measure what that change gains", use_re_entrant_checkpointing),
    Variant("densewindow", "--dense-window-mask", "dense sliding-window mask",
            "run the DiT's sliding-window attention with its dense band mask on the kernel PyTorch picks instead of "
            "the flash kernel with its own window (needs a plan that uses it: a CUDA GPU), to measure what that "
            "change gains", use_dense_window_mask),
    Variant("staticcompile", "--static-compile", "static-shape compile",
            "compile the blocks for the shapes they first see (torch.compile's default) instead of dynamic shapes "
            "(needs --compile), to measure what dynamic-shape kernels cost", use_static_shape_compile),
)
