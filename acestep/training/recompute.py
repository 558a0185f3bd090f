"""Gradient checkpointing of the transformer's blocks, in PyTorch's re-entrant form.

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
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from acestep.gpu.activations import checkpointed_layers

RECOMPUTE_FLAG = "_acestep_recompute"  # on each block: whether checkpoint_block checkpoints it


def _has_trainable_parameters(block: nn.Module) -> bool:
    return any(parameter.requires_grad for parameter in block.parameters())


def checkpoint_block(block: nn.Module, hidden_states: torch.Tensor, *args):
    """Run `block(hidden_states, *args)` under re-entrant gradient checkpointing (the signature of
    diffusers' `_gradient_checkpointing_func`); a block `enable_recompute` left out runs plainly."""
    if not getattr(block, RECOMPUTE_FLAG, True):
        return block(hidden_states, *args)
    inputs_need_grad = any(isinstance(x, torch.Tensor) and x.requires_grad for x in (hidden_states, *args))
    if not inputs_need_grad:
        if not _has_trainable_parameters(block):  # nothing to differentiate: autograd records nothing
            return block(hidden_states, *args)
        hidden_states = hidden_states.detach().requires_grad_(True)
    return checkpoint(block.__call__, hidden_states, *args, use_reentrant=True)


def enable_recompute(transformer: nn.Module, ratio: float = 1.0) -> nn.Module:
    """Turn on gradient checkpointing of `transformer`'s blocks (a diffusers model) with
    `checkpoint_block`: of the first `checkpointed_layers(blocks, ratio)`, all of them at ratio 1;
    the others keep their activations. Returns the transformer."""
    transformer.enable_gradient_checkpointing(gradient_checkpointing_func=checkpoint_block)
    count = checkpointed_layers(len(transformer.layers), ratio)
    for index, block in enumerate(transformer.layers):
        setattr(block, RECOMPUTE_FLAG, index < count)
    return transformer
