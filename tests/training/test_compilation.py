"""Regional compilation (`acestep/training/compilation.py`): each block compiled, the output kept,
a run whose batches vary as real data does stays compiled to its end, each block (LoRA, LoKr,
DoRA) is one graph, and torch.compile giving up becomes a warning of the run."""

import os
from functools import partial
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

import acestep.training.config as config_module
import acestep.training.session as session_module
from acestep.inference.training_hook import TrainingPreviews
from acestep.training.compilation import compile_blocks
from acestep.training.loop import train
from acestep.training.recompute import checkpoints_in_graph, enable_recompute

from .conftest import write_tensors_dir
from .test_loop import adapter_tensors, events, make_config
from .test_recompute import adapted, step


def test_compile_compiles_each_block_and_keeps_the_output(tiny_dit):
    """run.compile compiles the transformer's blocks one by one (regional compilation), not the
    whole model, and the compiled model computes what the eager one does."""
    import acestep.training.compilation as compilation
    from acestep.models.load import load_acestep

    transformer = load_acestep(tiny_dit, dtype=torch.float32, components=("transformer",)).transformer.eval()
    generator = torch.Generator().manual_seed(0)
    inputs = {"hidden_states": torch.randn(1, 20, 64, generator=generator),
              "timestep": torch.tensor([0.5]), "timestep_r": torch.tensor([0.5]),
              "encoder_hidden_states": torch.randn(1, 5, transformer.config.hidden_size, generator=generator),
              "context_latents": torch.randn(1, 20, 128, generator=generator)}
    with torch.no_grad():
        eager = transformer(**inputs).sample
        compile_blocks(transformer)
        compiled = transformer(**inputs).sample
    assert transformer._compiled_call_impl is None
    assert all(block._compiled_call_impl is not None for block in transformer.layers)
    assert getattr(torch._dynamo.config, compilation.SKIP_SIDE_EFFECTS)  # for DoRA under checkpointing
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


WARN_LIMIT = {"triton.cudagraph_dynamic_shape_warn_limit": 8}  # torch's default, which run.cuda_graphs turns off


def test_cuda_graphs_compile_the_blocks_with_reduce_overhead_and_mark_each_forward_pass(tiny_dit, monkeypatch):
    """run.cuda_graphs: each block compiled in inductor's reduce-overhead mode, still for dynamic
    shapes, and every call of the transformer begins a new step of the graphs (CUDA graphs record on
    a GPU only: here what the trainer asks of torch)."""
    from acestep.models.load import load_acestep

    transformer = load_acestep(tiny_dit, dtype=torch.float32, components=("transformer",)).transformer.eval()
    compiled, steps = [], []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kwargs: compiled.append((self, kwargs)))
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: steps.append(len(steps)))
    with torch._inductor.config.patch(WARN_LIMIT):  # restored after (pytest's monkeypatch would delete it)
        compile_blocks(transformer, cuda_graphs=True)
        assert torch._inductor.config.triton.cudagraph_dynamic_shape_warn_limit is None  # a graph per song length
    assert [module for module, _ in compiled] == list(transformer.layers)
    assert all(kwargs == {"dynamic": True, "backend": "inductor", "mode": "reduce-overhead"} for _, kwargs in compiled)
    inputs = {"hidden_states": torch.randn(1, 20, 64), "timestep": torch.tensor([0.5]),
              "timestep_r": torch.tensor([0.5]), "context_latents": torch.randn(1, 20, 128),
              "encoder_hidden_states": torch.randn(1, 5, transformer.config.hidden_size)}
    with torch.no_grad():
        transformer(**inputs)
        transformer(**inputs)
    assert steps == [0, 1]
    compiled.clear()
    compile_blocks(transformer)  # without CUDA graphs: torch.compile's default mode
    assert all(kwargs == {"dynamic": True, "backend": "inductor"} for _, kwargs in compiled)


@pytest.mark.slow  # torch.compile traces the blocks for half a minute on a CPU
def test_a_run_with_cuda_graphs_begins_a_graph_step_at_every_forward_pass(tmp_path, tiny_dit, monkeypatch):
    """run.cuda_graphs through the whole loop: the session compiles the blocks for CUDA graphs, and
    every forward pass of the transformer (each training batch, each validation pass) begins a new
    graph step, so no replay's outputs are kept past the pass that used them. The graphs record on a
    GPU only: here the CUDA check is lifted and aot_eager traces the blocks (it ignores the mode)."""
    tensors = write_tensors_dir(tmp_path / "tensors", tiny_dit, 4)
    forwards, marks, modes = [], [], []

    def compiling(transformer, cuda_graphs=False):
        modes.append(cuda_graphs)
        transformer.register_forward_pre_hook(lambda module, args: forwards.append(len(marks)))
        compile_blocks(transformer, backend="aot_eager", cuda_graphs=cuda_graphs)

    monkeypatch.setattr(session_module, "check_cuda_graphs_support", lambda accelerator: None)
    monkeypatch.setattr(session_module, "compile_blocks", compiling)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(len(marks)))
    config = make_config(tmp_path, tensors, tiny_dit, "run.compile=true", "run.cuda_graphs=true", "run.epochs=1",
                         "data.validation_split=0.25", "run.save_every_epochs=0")
    torch._dynamo.reset()
    with torch._inductor.config.patch(WARN_LIMIT):
        result = train(config)
    log = events(result.run_dir)
    start = next(e["message"] for e in log if e["type"] == "start")
    assert modes == [True] and "their kernels replayed as CUDA graphs, recorded for each new batch shape" in start
    assert result.step == 3 and any(e["type"] == "validation" for e in log)  # 3 training batches, 1 validation
    assert len(forwards) > 3 and forwards == list(range(len(forwards)))  # one mark before each forward pass
    assert marks == list(range(len(forwards)))


def test_cuda_graphs_with_accumulation_keep_each_gradient_in_one_buffer(tmp_path, tiny_dit, monkeypatch):
    """With CUDA graphs a parameter without a `.grad` would take the backward graph's output as its
    gradient, memory the next micro-batch's replay overwrites. With gradient accumulation the
    trainer gives each trained parameter a gradient buffer of its own before the first backward
    pass and zeroes it in place after each step: every micro-batch of the run adds into the same
    tensor, and the run trains exactly as one without CUDA graphs. The config rules still refuse
    the pair until a GPU has run it, so the test sets it past them."""
    tensors = write_tensors_dir(tmp_path / "tensors", tiny_dit, 4)
    monkeypatch.setattr(session_module, "check_cuda_graphs_support", lambda accelerator: None)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: None)
    rules = config_module.rule_problems  # the rules less the refusal of the pair
    monkeypatch.setattr(config_module, "rule_problems", lambda *args: [
        (path, message) for path, message in rules(*args) if "gradient_accumulation=2 do not go" not in message])

    def train_keeping_gradients(cuda_graphs: bool, name: str) -> tuple[list[list[torch.Tensor]], Path]:
        gradients = []  # for each trained parameter, its .grad after each micro-batch's backward pass

        def compiling(transformer, cuda_graphs=False):
            for parameter in (p for p in transformer.parameters() if p.requires_grad):
                seen = []
                gradients.append(seen)
                parameter.register_post_accumulate_grad_hook(lambda param, seen=seen: seen.append(param.grad))
            compile_blocks(transformer, backend="aot_eager", cuda_graphs=cuda_graphs)

        monkeypatch.setattr(session_module, "compile_blocks", compiling)
        config = make_config(tmp_path, tensors, tiny_dit, "run.compile=true", "optimizer.gradient_accumulation=2",
                             "run.epochs=1", "run.save_every_epochs=0", f"run.name={name}")
        config.run.cuda_graphs = cuda_graphs
        torch._dynamo.reset()
        result = train(config)
        assert result.step == 2  # 4 batches of one sample, 2 a step
        return gradients, result.run_dir

    graphed, graphed_run = train_keeping_gradients(True, "graphs")
    plain, plain_run = train_keeping_gradients(False, "plain")
    assert graphed and all(len(seen) == 4 for seen in graphed + plain)  # 4 micro-batches
    assert all(all(grad is seen[0] for grad in seen) for seen in graphed)  # one buffer for the whole run
    assert all(len({id(grad) for grad in seen}) > 1 for seen in plain)  # a new tensor each step without
    for name, value in adapter_tensors(graphed_run / "final").items():
        assert torch.equal(value, adapter_tensors(plain_run / "final")[name]), name


@pytest.mark.slow  # torch.compile traces for a minute or more on a CPU
def test_a_compiled_run_stays_compiled_through_varied_batches_validation_and_previews(tmp_path, tiny_dit,
                                                                                     monkeypatch):
    """Crops and conditions of different lengths in every batch, a last batch of one, validation
    batches of two and one, previews at two strengths, gradient checkpointing, bf16-mixed: the run
    ends without torch.compile giving up on the blocks (that raises here instead of running them
    eagerly), and previews compile nothing."""
    tensors = write_tensors_dir(tmp_path / "tensors", tiny_dit, 8)  # 20-44 frames, 6-13 condition tokens
    # aot_eager traces and guards the same graphs as inductor without generating kernels (minutes on a CPU)
    monkeypatch.setattr(session_module, "compile_blocks", partial(compile_blocks, backend="aot_eager"))
    preview_graphs, render = [], TrainingPreviews._render_files

    def counted_render(self, *args):
        before = counters["stats"]["unique_graphs"]
        rendered = render(self, *args)
        preview_graphs.append(counters["stats"]["unique_graphs"] - before)
        return rendered

    monkeypatch.setattr(TrainingPreviews, "_render_files", counted_render)
    checkpointed = []
    monkeypatch.setattr(session_module, "enable_recompute", lambda transformer, ratio, compiled: checkpointed.append(
        enable_recompute(transformer, ratio, compiled=compiled)))
    config = make_config(tmp_path, tensors, tiny_dit, "run.compile=true", "run.gradient_checkpointing=true",
                         "run.precision=bf16-mixed", "model.dtype=bf16", "data.batch_size=2",
                         "data.validation_split=0.4", "run.epochs=1", "run.save_every_epochs=0",
                         "run.preview_caption=mystyle, lofi", "run.preview_seconds=0.4",
                         "run.preview_strengths=[0, 1]", "run.preview_every_epochs=1")
    torch._dynamo.reset()
    counters.clear()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        result = train(config)
    log = events(result.run_dir)
    start = next(e["message"] for e in log if e["type"] == "start")
    assert "3 batches" in start and "blocks compiled by torch.compile" in start  # 5 samples: 2, 2 and 1
    assert f"its kernels are kept in {os.environ['TORCHINDUCTOR_CACHE_DIR']} for later runs" in start
    assert result.step == 3 and any(e["type"] == "validation" for e in log)
    assert preview_graphs == [0]
    assert all(checkpoints_in_graph(block) for block in checkpointed[0].layers)  # compiled: inside the graphs
    # 12 on torch 2.13 (14 with the re-entrant checkpoint of before); past BLOCK_GRAPH_LIMIT it raises above
    assert 0 < counters["stats"]["unique_graphs"] <= 12


@pytest.mark.parametrize("checkpointed", [False, True])
@pytest.mark.parametrize("kind", ["lora", "lokr", "dora"])
def test_a_block_of_the_trained_model_compiles_to_one_graph(fixture_dir, kind, checkpointed):
    """Regional compile sees each block whole: the attention processor (its plan, RoPE), the fused
    RMSNorms with autocast kept out of them, the LoRA, LoKr or DoRA layers (DoRA's base-weight
    lookup substituted as compile_blocks does), and with gradient checkpointing the checkpoint
    around them (`acestep.training.recompute`) trace without a graph break."""
    import acestep.training.compilation as compilation

    compilation._trace_base_weights_as_is()  # what compile_blocks sets up; without it DoRA broke 25 times
    transformer, adapter = adapted(fixture_dir, kind, dropout=0.1)
    adapter.skip_input_casts()
    if checkpointed:
        enable_recompute(transformer, compiled=True)
    captured = {}

    def capture(module, args, kwargs):
        captured.setdefault("call", (args, kwargs))

    hook = transformer.layers[0].register_forward_pre_hook(capture, with_kwargs=True)
    try:
        step(transformer, adapter)
    finally:
        hook.remove()
    args, kwargs = captured["call"]
    assert checkpoints_in_graph(transformer.layers[0]) == checkpointed
    # compile_blocks' setting: without it DoRA's cache clearing broke the checkpointed block's graph
    with torch._dynamo.config.patch({compilation.SKIP_SIDE_EFFECTS: True}), torch.autocast("cpu", dtype=torch.bfloat16):
        explained = torch._dynamo.explain(transformer.layers[0])(*args, **kwargs)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.parametrize("checkpointed", [False, True])
def test_compiled_dora_blocks_train_as_the_eager_ones(fixture_dir, checkpointed):
    """The substituted base-weight lookup changes nothing but the tracing, nor does skipping the
    replay of DoRA's cache clearing in a checkpointed block: a DoRA step through a compiled block
    (aot_eager: the same operators) gives the eager prediction and gradients. One block, compiled as
    compile_blocks compiles each: every further block is another half minute of tracing on a CPU,
    and the compiled run test above traces them all."""
    import acestep.training.compilation as compilation

    eager, eager_adapter = adapted(fixture_dir, "dora")
    compiled, compiled_adapter = adapted(fixture_dir, "dora")
    if checkpointed:
        enable_recompute(compiled, compiled=True)
    compilation._trace_base_weights_as_is()
    torch._dynamo.reset()
    compiled.layers[1].compile(dynamic=True, backend="aot_eager")  # its input requires grad, as in training
    expected, expected_grads = step(eager, eager_adapter)
    counters.clear()
    with torch._dynamo.config.patch({compilation.SKIP_SIDE_EFFECTS: True}):  # as compile_blocks sets it
        prediction, grads = step(compiled, compiled_adapter)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]  # compiled whole, not eager
    torch.testing.assert_close(prediction, expected, rtol=0, atol=0)
    for a, b in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2 * b.abs().max().item())


def test_graphs_inductor_runs_without_cuda_graphs_are_reported_once_for_each_reason():
    """With run.cuda_graphs, inductor may run a compiled graph without recording it (a mutated
    input, an op it cannot capture, too many re-recordings), which it only logs, leaving those
    steps as slow as with compile alone: inside `reporting_fallbacks` (the whole run, whose reports
    are warning events) each reason is reported once. The warnings come from torch's own function,
    as on a GPU (a CPU records no graphs to skip)."""
    from torch._inductor.cudagraph_utils import log_cudagraph_skip_and_bump_counter

    from acestep.training.compilation import reporting_fallbacks

    reported, reasons = [], ["mutated inputs (1 instances)", "mutated inputs (1 instances)", "incompatible op nonzero"]
    with reporting_fallbacks(reported.append):
        for reason in reasons:
            log_cudagraph_skip_and_bump_counter(f"skipping cudagraphs due to {reason}\nFound from: ...")
        log_cudagraph_skip_and_bump_counter("")  # a report, never an error inside torch's logging call
    log_cudagraph_skip_and_bump_counter("skipping cudagraphs due to a reason outside the run")
    assert [message.split('"')[1] for message in reported] == [
        "skipping cudagraphs due to mutated inputs (1 instances)", "skipping cudagraphs due to incompatible op nonzero",
        "no reason given"]
    assert reported[0].startswith("run.cuda_graphs: torch.compile runs some of the blocks' graphs without CUDA graphs")
    assert reported[0].endswith("as with run.compile alone; the run goes on. Please report it with the run's "
                                "config.toml.")


def test_torch_compile_giving_up_on_the_blocks_is_a_warning_of_the_run(tmp_path, tiny_dit, monkeypatch):
    """Past its recompile limit torch.compile runs a function eagerly and only logs it; the run
    reports it as a warning event and trains on."""
    import acestep.training.compilation as compilation

    tensors = write_tensors_dir(tmp_path / "tensors", tiny_dit, 2)
    monkeypatch.setattr(compilation, "BLOCK_GRAPH_LIMIT", 1)
    monkeypatch.setattr(session_module, "compile_blocks", partial(compile_blocks, backend="aot_eager"))
    config = make_config(tmp_path, tensors, tiny_dit, "run.compile=true", "run.max_steps=1",
                         "optimizer.warmup_steps=0")
    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=1):  # the sliding-window and full layers need two graphs
        result = train(config)
    warnings = [e for e in events(result.run_dir) if e["type"] == "warning"]
    assert result.step == 1 and len(warnings) == 1
    assert warnings[0]["message"].startswith("torch.compile gave up on 'forward' (") and "after 1 graphs" in \
        warnings[0]["message"]
