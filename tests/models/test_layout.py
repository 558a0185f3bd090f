"""The DiT's residual stream is [B, T, D]-contiguous (`acestep/models/layout.py`): every Linear of a
training step is one matrix product, not a batched matmul against an expanded weight."""

from collections import Counter

import torch
from diffusers.models.normalization import RMSNorm
from torch.utils._python_dispatch import TorchDispatchMode

from acestep.models import load_acestep
from acestep.models.layout import _sequence_major, keep_sequence_major
from acestep.models.norms import FusedRMSNorm
from acestep.training.adapters import add_adapter
from acestep.training.objective import context_latents


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.__name__] += 1
        return func(*args, **(kwargs or {}))


def adapted_transformer(tiny_checkpoints):
    transformer = load_acestep(tiny_checkpoints / "acestep-v15-turbo", dtype=torch.float32,
                               components=("transformer",)).transformer
    add_adapter(transformer, "lora", rank=4, alpha=8.0, mlp=True)
    return transformer


def training_step(transformer, frames: int = 50, batch: int = 2):
    """Forward and backward of a batch; returns (prediction, ops counted, first block's input)."""
    generator = torch.Generator().manual_seed(0)
    seen = {}

    def look(module, args, kwargs):
        seen.setdefault("stream", kwargs.get("hidden_states", args[0] if args else None))

    hook = transformer.layers[0].register_forward_pre_hook(look, with_kwargs=True)
    inputs = {"hidden_states": torch.randn(batch, frames, 64, generator=generator),
              "timestep": torch.full((batch,), 0.5), "timestep_r": torch.full((batch,), 0.5),
              "encoder_hidden_states": torch.randn(batch, 12, transformer.condition_embedder.in_features,
                                                   generator=generator),
              "context_latents": context_latents(torch.zeros(1, frames, 64), frames, batch)}
    try:
        with CountOps() as ops:
            prediction = transformer(**inputs).sample
            prediction.pow(2).mean().backward()
    finally:
        hook.remove()
    return prediction.detach(), ops.counts, seen["stream"]


def test_the_stream_is_contiguous_and_no_linear_runs_as_a_batched_matmul(tiny_checkpoints):
    transformer = adapted_transformer(tiny_checkpoints)
    assert _sequence_major in transformer.proj_in_conv._forward_hooks.values()  # set by the loader
    prediction, counts, stream = training_step(transformer)
    assert stream.is_contiguous()
    assert counts["bmm.default"] == 0 and counts["mm.default"] > 0

    transformer.proj_in_conv._forward_hooks.clear()  # diffusers' model as it is: its layout and its norms
    for norm in transformer.modules():  # (a fused norm's output is contiguous, which would hide the bmm)
        if isinstance(norm, FusedRMSNorm):
            norm.__class__ = RMSNorm
    plain, plain_counts, plain_stream = training_step(transformer)
    assert not plain_stream.is_contiguous()
    assert plain_counts["bmm.default"] > 0  # what the hook removes
    torch.testing.assert_close(prediction, plain, rtol=1e-5, atol=1e-6)


def test_keep_sequence_major_adds_its_hook_once(tiny_checkpoints):
    transformer = adapted_transformer(tiny_checkpoints)
    keep_sequence_major(keep_sequence_major(transformer))
    assert list(transformer.proj_in_conv._forward_hooks.values()).count(_sequence_major) == 1
