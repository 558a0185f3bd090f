"""Gradient checkpointing (`acestep/training/recompute.py`): in PyTorch's re-entrant form, the same
gradients as without checkpointing and as diffusers' default, bit for bit, the first block's
adapter included, and blocks without anything to train run plainly; for compiled blocks, inside
their graphs, with the same gradients and the same tensors kept for the backward pass."""

import warnings

import pytest
import torch

from acestep.gpu.activations import count_saved_bytes
from acestep.models import load_acestep
from acestep.training.adapters import add_adapter
from acestep.training.objective import context_latents
from acestep.training.recompute import RECOMPUTE_FLAG, checkpoints_in_graph, checkpoint_block, enable_recompute


def adapted(fixture_dir, kind="lora", **adapter):
    transformer = load_acestep(fixture_dir, dtype=torch.bfloat16, components=("transformer",)).transformer
    found = add_adapter(transformer, kind, rank=4, alpha=8.0, **adapter)
    with torch.no_grad():
        for param in found.parameters():
            param.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(2))
    return transformer.train(), found


def step_inputs(transformer) -> dict:
    """The fixed batch `step` trains on (fp32 tensors, seed 3)."""
    generator = torch.Generator().manual_seed(3)
    width = transformer.condition_embedder.in_features
    t = torch.full((2,), 0.6)
    return {"hidden_states": torch.randn(2, 30, 64, generator=generator), "timestep": t, "timestep_r": t,
            "encoder_hidden_states": torch.randn(2, 7, width, generator=generator),
            "context_latents": context_latents(torch.zeros(1, 30, 64), 30, 2)}


def step(transformer, adapter):
    """Forward + backward of `step_inputs` in bf16 under CPU autocast, dropout drawn from seed 0;
    (prediction, the adapter's gradients)."""
    inputs = step_inputs(transformer)
    for param in adapter.parameters():
        param.grad = None
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        prediction = transformer(**inputs).sample
    prediction.float().pow(2).mean().backward()
    return prediction.detach(), [param.grad.clone() for param in adapter.parameters()]


def record_checkpointed(monkeypatch, re_entrant: bool = True) -> list:
    """The blocks handed to torch's checkpoint from now on, in call order: re-entrantly (by
    `checkpoint_block`), or with `re_entrant=False` by the blocks themselves."""
    import acestep.training.recompute as recompute

    checkpointed, checkpoint = [], recompute.checkpoint  # torch's, or another recorder's

    def counted(function, *args, **kwargs):
        if kwargs["use_reentrant"] == re_entrant:
            checkpointed.append(function.__self__)
        return checkpoint(function, *args, **kwargs)

    monkeypatch.setattr(recompute, "checkpoint", counted)
    return checkpointed


def test_re_entrant_checkpointing_gives_the_gradients_of_no_checkpointing_bit_for_bit(fixture_dir):
    transformer, adapter = adapted(fixture_dir, dropout=0.1)  # dropout: the recomputation redraws the same masks
    _, plain = step(transformer, adapter)
    transformer.enable_gradient_checkpointing()  # diffusers' default, non-re-entrant
    _, default = step(transformer, adapter)
    enable_recompute(transformer)
    _, recomputed = step(transformer, adapter)
    assert all(torch.equal(a, b) for a, b in zip(recomputed, plain, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(recomputed, default, strict=True))
    first_block = [param.grad for name, param in transformer.named_parameters()
                   if name.startswith("layers.0.") and param.requires_grad]
    assert first_block and all(grad.abs().sum() > 0 for grad in first_block)  # the first block's adapter learns


def test_blocks_with_nothing_to_train_run_without_a_checkpoint(fixture_dir, monkeypatch):
    """With the adapter on the last block only, the blocks before it get no gradient from their
    input nor their parameters: they run plainly (no recomputation, no warning)."""
    transformer, adapter = adapted(fixture_dir, modules=["layers.3.self_attn.to_q"])
    _, plain = step(transformer, adapter)
    enable_recompute(transformer)
    checkpointed = record_checkpointed(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "None of the inputs have requires_grad=True" would fail here
        _, recomputed = step(transformer, adapter)
    assert checkpointed == [transformer.layers[3]]
    assert all(torch.equal(a, b) for a, b in zip(recomputed, plain, strict=True))


@pytest.mark.parametrize("ratio, expected", [(0.5, [0, 1]), (0.25, [0]), (0.75, [0, 1, 2])])
def test_a_ratio_checkpoints_the_first_blocks_only_with_the_same_gradients(fixture_dir, monkeypatch, ratio, expected):
    transformer, adapter = adapted(fixture_dir, dropout=0.1)
    plain_prediction, plain = step(transformer, adapter)
    enable_recompute(transformer, ratio)
    checkpointed = record_checkpointed(monkeypatch)
    prediction, recomputed = step(transformer, adapter)
    assert checkpointed == [transformer.layers[i] for i in expected]
    assert torch.equal(prediction, plain_prediction)
    assert all(torch.equal(a, b) for a, b in zip(recomputed, plain, strict=True))


def test_checkpoint_block_marks_the_input_only_when_the_block_has_something_to_train():
    block = torch.nn.Linear(4, 4)
    block.requires_grad_(False)
    x = torch.randn(2, 4)
    assert not checkpoint_block(block, x).requires_grad  # frozen block, plain input: nothing to record
    block.weight.requires_grad_(True)
    out = checkpoint_block(block, x)
    assert out.requires_grad and not x.requires_grad  # a detached copy was marked, not the caller's tensor
    out.sum().backward()
    assert block.weight.grad is not None and block.weight.grad.abs().sum() > 0


def test_blocks_to_be_compiled_checkpoint_themselves_and_a_second_call_sets_them_anew(fixture_dir, monkeypatch):
    """enable_recompute(compiled=True) gives each checkpointed block a forward that runs torch's
    checkpoint (non-re-entrant, traceable) and leaves checkpoint_block nothing to do; run eagerly it
    computes the gradients of no checkpointing bit for bit. Called again with another ratio or form,
    the blocks are set anew, never wrapped twice."""
    transformer, adapter = adapted(fixture_dir, dropout=0.1)
    plain_prediction, plain = step(transformer, adapter)
    enable_recompute(transformer, compiled=True)
    assert all(checkpoints_in_graph(block) for block in transformer.layers)
    re_entrant = record_checkpointed(monkeypatch)
    by_themselves = record_checkpointed(monkeypatch, re_entrant=False)
    prediction, recomputed = step(transformer, adapter)
    assert re_entrant == [] and by_themselves == list(transformer.layers)
    assert torch.equal(prediction, plain_prediction)
    assert all(torch.equal(a, b) for a, b in zip(recomputed, plain, strict=True))
    enable_recompute(transformer, 0.5, compiled=True)
    assert [checkpoints_in_graph(block) for block in transformer.layers] == [True, True, False, False]
    assert [getattr(block, RECOMPUTE_FLAG) for block in transformer.layers] == [True, True, False, False]
    assert transformer.layers[0].forward.args[0].__func__ is type(transformer.layers[0]).forward  # wrapped once
    enable_recompute(transformer)  # re-entrant again
    assert not any(checkpoints_in_graph(block) for block in transformer.layers)
    _, again = step(transformer, adapter)
    assert re_entrant == list(transformer.layers)
    assert all(torch.equal(a, b) for a, b in zip(again, plain, strict=True))


def saved_for_backward(transformer) -> int:
    """Bytes of the floating-point tensors the forward pass of `step_inputs` keeps for the backward
    pass, the model's parameters left out, each storage once (`count_saved_bytes`); then the backward pass."""
    with count_saved_bytes(transformer, floating_only=True) as counted:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            prediction = transformer(**step_inputs(transformer)).sample
    prediction.float().pow(2).mean().backward()
    return counted["saved"]


@pytest.mark.slow  # torch.compile traces for half a minute on a CPU
def test_compiled_blocks_checkpoint_inside_their_graphs_with_the_gradients_and_memory_of_the_re_entrant_form(
        fixture_dir):
    """The checkpoint traced into each compiled block (aot_eager: the same operators as eagerly)
    gives the gradients of no checkpointing bit for bit, adapter dropout included (the recomputation
    replays the same random draws), in one graph per kind of block without a break, and keeps
    what the re-entrant form keeps for the backward pass: each block's input, not its activations."""
    from torch._dynamo.utils import counters

    from acestep.training.compilation import compile_blocks

    transformer, adapter = adapted(fixture_dir, dropout=0.1)
    _, plain = step(transformer, adapter)
    plain_kept = saved_for_backward(transformer)
    enable_recompute(transformer)
    re_entrant_kept = saved_for_backward(transformer)
    enable_recompute(transformer, compiled=True)
    torch._dynamo.reset()
    counters.clear()
    compile_blocks(transformer, backend="aot_eager")
    _, compiled = step(transformer, adapter)
    assert not counters["graph_break"]
    assert counters["stats"]["unique_graphs"] == 3  # the first block (input without grad); sliding window or not
    assert all(torch.equal(a, b) for a, b in zip(compiled, plain, strict=True))
    kept = saved_for_backward(transformer)
    assert counters["stats"]["unique_graphs"] == 3  # nothing compiled again
    # beside the re-entrant form's block inputs: RoPE's cos and sin and a few scalars (3.5% here)
    assert re_entrant_kept <= kept <= 1.1 * re_entrant_kept < 0.1 * plain_kept


@pytest.mark.slow  # torch.compile traces for a minute or more on a CPU
@pytest.mark.parametrize("compiled", [False, True])
def test_checkpointing_works_with_compiled_blocks(fixture_dir, compiled):
    from acestep.training.compilation import compile_blocks

    transformer, adapter = adapted(fixture_dir)
    _, plain = step(transformer, adapter)
    enable_recompute(transformer, compiled=compiled)
    if compiled:
        compile_blocks(transformer)
    _, recomputed = step(transformer, adapter)
    # inductor fuses the bf16 arithmetic, which rounds differently: about 1-2% of the largest
    # gradient, with or without checkpointing
    for a, b in zip(recomputed, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=(4e-2 if compiled else 0) * b.abs().max().item())
