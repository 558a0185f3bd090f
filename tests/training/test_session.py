"""TrainingSession.start: the pre-training memory check runs on CUDA before the model loads,
and is skipped on CPU/MPS and with run.skip_vram_check."""

import lightning_fabric
import pytest

import acestep.gpu.fit as fit
import acestep.training.session as session_module
from acestep.errors import TrainingError
from acestep.training.config import TrainingConfig, apply_overrides
from acestep.training.loop import train

from .conftest import write_tensors_dir


@pytest.fixture
def config(tmp_path, tiny_dit):
    tensors = write_tensors_dir(tmp_path / "tensors", tiny_dit, 2)
    return apply_overrides(TrainingConfig(), [f"data.tensors_dir={tensors}", f"model.checkpoint={tiny_dit}",
                                              f"run.output_dir={tmp_path / 'runs'}", "run.max_steps=1",
                                              "run.precision=32-true", "model.dtype=fp32"])


@pytest.fixture
def checks(monkeypatch):
    calls = []

    def refuse(config, fabric, checkpoints_dir=None):
        calls.append((config.run.accelerator, fabric.world_size))
        raise TrainingError("Not enough free GPU memory (fake)")

    monkeypatch.setattr(fit, "check_training_memory", refuse)
    return calls


@pytest.fixture
def pretend_cuda(monkeypatch):
    """The session believes it runs on CUDA; Fabric runs on the CPU."""
    real = lightning_fabric.Fabric

    class CpuFabric(real):
        def __init__(self, **kwargs):
            super().__init__(accelerator="cpu", devices=1, precision="32-true")

    monkeypatch.setattr(lightning_fabric, "Fabric", CpuFabric)
    monkeypatch.setattr(session_module, "resolve_accelerator", lambda name: "cuda")


def test_on_cuda_the_check_runs_before_the_model_loads(config, checks, pretend_cuda, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the memory check")

    monkeypatch.setattr("acestep.models.load.load_acestep", no_load)
    with pytest.raises(TrainingError, match="Not enough free GPU memory"):
        train(config)
    assert checks == [("auto", 1)]


def test_skip_vram_check_overrides_it(config, checks, pretend_cuda):
    assert train(apply_overrides(config, ["run.skip_vram_check=true"])).step == 1
    assert checks == []


def test_on_cpu_there_is_no_check(config, checks):
    assert train(apply_overrides(config, ["run.accelerator=cpu"])).step == 1
    assert checks == []


def test_a_mixed_precision_run_trains_with_the_input_casts_skipped(config, monkeypatch):
    """bf16-mixed on the CPU (autocast, bf16 weights): the session skips PEFT's input casts
    (`Adapter.skip_input_casts`), and the run trains to finite losses."""
    import math

    from acestep.training.adapters import Adapter
    from training.test_loop import events

    skipped, original = [], Adapter.skip_input_casts
    monkeypatch.setattr(Adapter, "skip_input_casts", lambda self: skipped.append(self) or original(self))
    result = train(apply_overrides(config, ["run.precision=bf16-mixed", "model.dtype=bf16", "run.max_steps=2",
                                            "run.log_every_steps=1"]))
    assert result.step == 2 and len(skipped) == 1
    layers = [m for m in skipped[0].transformer.modules() if hasattr(m, "cast_input_dtype_enabled")]
    assert layers and not any(layer.cast_input_dtype_enabled for layer in layers)
    losses = [e["loss"] for e in events(result.run_dir) if e["type"] == "log"]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)


def test_compile_without_triton_stops_before_the_model_loads(config, pretend_cuda, monkeypatch):
    import acestep.training.compilation as compilation

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the compile check")

    real_find_spec = compilation.importlib.util.find_spec
    monkeypatch.setattr(compilation.importlib.util, "find_spec",
                        lambda name, *args: None if name == "triton" else real_find_spec(name, *args))
    monkeypatch.setattr("acestep.models.load.load_acestep", no_load)
    with pytest.raises(TrainingError, match="run.compile needs Triton .* or set run.compile=false"):
        train(apply_overrides(config, ["run.compile=true", "run.skip_vram_check=true"]))
    compilation.check_compile_support("cpu")  # CPU (C++) and MPS kernels need no Triton
    compilation.check_compile_support("mps")


def test_cuda_graphs_off_a_cuda_gpu_stop_before_the_model_loads(config, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the CUDA graphs check")

    monkeypatch.setattr("acestep.models.load.load_acestep", no_load)
    with pytest.raises(TrainingError, match=r"run.cuda_graphs records CUDA graphs, which need a CUDA GPU; this "
                                            r"run's accelerator is cpu: set run.cuda_graphs=false\."):
        train(apply_overrides(config, ["run.compile=true", "run.cuda_graphs=true"]))


def test_repeats_train_each_sample_that_many_times_an_epoch(config, monkeypatch):
    """data.repeats 3 over 2 samples: the epoch has 6 batches of 1, each sample 3 times, and the run
    trains the plan's 6 steps (the copies' own crops: test_data)."""
    from acestep.training.session import TrainingSession

    seen, epoch_batches = [], TrainingSession.epoch_batches

    def logged(self, epoch, skip):
        for batch in epoch_batches(self, epoch, skip):
            seen.append(tuple(batch.ids))
            yield batch

    monkeypatch.setattr(TrainingSession, "epoch_batches", logged)
    result = train(apply_overrides(config, ["data.repeats=3", "run.max_steps=null", "run.epochs=1",
                                            "run.save_every_epochs=0"]))
    assert result.step == 6 and len(seen) == 6
    assert sorted(ids for batch in seen for ids in batch) == ["sample00"] * 3 + ["sample01"] * 3
