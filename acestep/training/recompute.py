"""Gradient checkpointing of the transformer's blocks: re-entrant when they run eagerly, traced into
their graphs when they are compiled.

diffusers checkpoints each block with `torch.utils.checkpoint.checkpoint(use_reentrant=False)`,
which puts a pack and an unpack hook on every tensor the block saves for the backward pass and
checks the metadata of every recomputed one: thousands of Python calls per step on the 24-block
DiT. A step on a fast GPU is bound by the host (the H200 profile: the GPU busy 81 ms of a 444 ms
step at batch 1, and checkpointing alone added some 200 ms), and those hooks are a large part of
what checkpointing costs the host. The re-entrant form runs the block without autograd in the
forward pass and, in the backward pass, recomputes it and back-propagates through it with one
autograd call: the same arithmetic (the gradients are bit-identical), far fewer Python calls.

It needs a block input that requires a gradient, or the block's output would not and its adapter
would get no gradient: the first block's input (the patchified latents) does not, so
`checkpoint_block` hands a block with trainable parameters its hidden states marked as requiring
one. That costs one more product per frozen layer of that block in the backward pass.

`run.gradient_checkpointing_ratio` below 1 checkpoints only the first blocks; the others keep their
activations, which trades memory for the recomputation's time. The first blocks are the ones
checkpointed because the backward pass reaches them last: by then the plain blocks' activations
are freed, and a recomputed block's activations take their place instead of adding to them.

Compiled blocks (`run.compile`) are checkpointed the other way round: a checkpointed block's own
forward runs torch's non-re-entrant checkpoint (`_checkpoint_in_graph`), which torch.compile traces
into the block's graph, so the recomputation is part of the compiled backward graph. Around a
compiled block the re-entrant form ran the block's compiled forward again inside the backward pass,
which CUDA graphs cannot take (the H200, 2026-11-28: "accessing tensor output of CUDAGraphs that
has been overwritten by a subsequent run"), and needed a second graph of each block, without grad,
for the forward pass. Traced, a block keeps its input for the backward pass as the re-entrant form
does (and the random-number state of its random operators); the gradients are the same bit for bit
(aot_eager, dropout included; `tests/training/test_recompute.py`).
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from acestep.gpu.activations import checkpointed_layers

RECOMPUTE_FLAG = "_acestep_recompute"  # on each block: whether it is checkpointed


def _has_trainable_parameters(block: nn.Module) -> bool:
    return any(parameter.requires_grad for parameter in block.parameters())


def checkpoint_block(block: nn.Module, hidden_states: torch.Tensor, *args):
    """Run `block(hidden_states, *args)` under re-entrant gradient checkpointing (the signature of
    diffusers' `_gradient_checkpointing_func`); a block `enable_recompute` left out runs plainly, and
    so does one that checkpoints itself inside its compiled graph (`_checkpoint_in_graph`)."""
    if not getattr(block, RECOMPUTE_FLAG, True) or checkpoints_in_graph(block):
        return block(hidden_states, *args)
    inputs_need_grad = any(isinstance(x, torch.Tensor) and x.requires_grad for x in (hidden_states, *args))
    if not inputs_need_grad:
        if not _has_trainable_parameters(block):  # nothing to differentiate: autograd records nothing
            return block(hidden_states, *args)
        hidden_states = hidden_states.detach().requires_grad_(True)
    return checkpoint(block.__call__, hidden_states, *args, use_reentrant=True)


def _checkpoint_in_graph(forward, *args, **kwargs):
    """A checkpointed block's forward when the block is compiled: `forward` under torch's
    non-re-entrant checkpoint, which torch.compile traces into the block's graph; without grad
    (validation, previews) plainly."""
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def checkpoints_in_graph(block: nn.Module) -> bool:
    """Whether `block` checkpoints itself (`enable_recompute(compiled=True)`)."""
    forward = vars(block).get("forward")
    return isinstance(forward, functools.partial) and forward.func is _checkpoint_in_graph


def enable_recompute(transformer: nn.Module, ratio: float = 1.0, compiled: bool = False) -> nn.Module:
    """Turn on gradient checkpointing of `transformer`'s blocks (a diffusers model): of the first
    `checkpointed_layers(blocks, ratio)`, all of them at ratio 1; the others keep their activations.
    `compiled`: the blocks are compiled (or will be), and each checkpointed block checkpoints inside
    its own graph (`_checkpoint_in_graph`); else `checkpoint_block` checkpoints them re-entrantly.
    Called again, it sets the blocks anew. Returns the transformer."""
    transformer.enable_gradient_checkpointing(gradient_checkpointing_func=checkpoint_block)
    count = checkpointed_layers(len(transformer.layers), ratio)
    for index, block in enumerate(transformer.layers):
        setattr(block, RECOMPUTE_FLAG, index < count)
        if checkpoints_in_graph(block):
            del block.forward  # back to the class's forward
        if compiled and index < count:
            block.forward = functools.partial(_checkpoint_in_graph, block.forward)
    return transformer
