"""The pre-training memory check with fake free-memory figures: the message, the settings that
would fit, the processes holding memory, and the hook in the trainer (CUDA only, overridable)."""

import re
from types import SimpleNamespace

import pytest
import torch

import acestep.gpu.monitor as monitor
from acestep.errors import TrainingError
from acestep.gpu.estimate import ACESTEP_XL_DIT_CONFIG, GIB, estimate_vram
from acestep.gpu.fit import (
    check_fits, check_training_memory, other_processes, out_of_memory_message, settings_that_fit,
)
from acestep.gpu.monitor import GpuProcess, GpuStatus, SystemGpuReport
from acestep.training.config import TrainingConfig, apply_overrides
from acestep.training.presets import apply_named_preset

BIG = apply_overrides(apply_named_preset(TrainingConfig(), "vram_24gb_plus"), ["data.tensors_dir=/t"])
PROCESSES = [GpuProcess(4321, "blender", int(1.5 * GIB)), GpuProcess(1234, "python", 6 * GIB),
             GpuProcess(99, "Xorg", None)]


def message_of(call) -> str:
    with pytest.raises(TrainingError) as caught:
        call()
    return str(caught.value)


def test_a_run_that_fits_passes():
    estimate = estimate_vram(BIG)
    check_fits(BIG, estimate.total_bytes, PROCESSES, estimate)
    check_fits(BIG, 80 * GIB, [], estimate)


def test_a_run_that_does_not_fit_names_the_shortfall_the_processes_and_what_would_fit():
    estimate = estimate_vram(BIG)
    free = 10 * GIB
    text = message_of(lambda: check_fits(BIG, free, PROCESSES, estimate))
    short = (estimate.total_bytes - free) / GIB
    assert text.startswith(f"Not enough free GPU memory: this run needs about {estimate.total_bytes / GIB:.2f} GiB, "
                           f"10.00 GiB is free ({short:.2f} GiB short).")
    assert "activations" in text and "batch 3 x 60 s" in text  # the estimate by part
    assert ("Other processes hold memory on this GPU: python (pid 1234) 6.00 GiB, blender (pid 4321) 1.50 GiB, "
            "Xorg (pid 99) unknown.") in text
    suggestions = re.findall(r"^  (\d)\. (.*)  \(about ([\d.]+) GiB\)$", text, flags=re.MULTILINE)
    assert [number for number, _, _ in suggestions] == ["1", "2", "3"]
    assert suggestions[0][1] == "--set run.gradient_checkpointing=true"  # the cheapest change first
    assert all(float(size) <= 10.0 for _, _, size in suggestions)
    assert text.endswith("To start anyway (the estimate may be off by some 15%): --set run.skip_vram_check=true")


def test_a_run_checkpointing_some_layers_is_offered_all_of_them_first():
    some = apply_overrides(BIG, ["run.gradient_checkpointing=true", "run.gradient_checkpointing_ratio=0.25"])
    every = apply_overrides(some, ["run.gradient_checkpointing_ratio=1"])
    free = (estimate_vram(some).total_bytes + estimate_vram(every).total_bytes) // 2
    found = settings_that_fit(some, estimate_vram(some), free, limit=3)
    assert found[0].changes == ("run.gradient_checkpointing_ratio=1",)
    assert found[0].estimate.total_bytes == estimate_vram(every).total_bytes


def test_the_suggested_settings_really_fit_and_keep_the_effective_batch():
    estimate = estimate_vram(BIG)
    free = int(9 * GIB)
    found = settings_that_fit(BIG, estimate, free, limit=10)
    assert len(found) == 10 and all(fit.estimate.total_bytes <= free for fit in found)
    sizes = [fit.options for fit in found]
    assert sizes == sorted(sizes) and sizes[0] == 1
    for fit in found:
        changes, fitted = list(fit.changes), fit.estimate
        config = fitted.config
        assert config.data.batch_size * config.optimizer.gradient_accumulation == 3
        if "optimizer.name=adamw8bit" in changes or "optimizer.name=adafactor" in changes:
            assert "optimizer.lr=0.0001" in changes  # Prodigy's 1.0 would be far too high for them
        applied = apply_overrides(BIG, changes)  # the texts are valid --set overrides
        assert estimate_vram(applied).total_bytes == fitted.total_bytes


def test_a_run_with_cuda_graphs_is_offered_checkpointing_and_accumulation_without_them():
    """run.cuda_graphs refuses gradient checkpointing and accumulation: a suggestion that turns one
    of them on turns the graphs off, so every suggestion is a config the trainer accepts."""
    graphs = apply_overrides(BIG, ["run.compile=true", "run.cuda_graphs=true"])
    found = settings_that_fit(graphs, estimate_vram(graphs), int(9 * GIB), limit=10)
    assert any("run.gradient_checkpointing=true" in fit.changes for fit in found)
    for fit in found:
        turns_on = "run.gradient_checkpointing=true" in fit.changes or "data.batch_size=1" in fit.changes
        assert ("run.cuda_graphs=false" in fit.changes) == turns_on
        apply_overrides(graphs, list(fit.changes))  # valid: the rules accept each


def test_an_xl_run_too_large_for_an_8gb_card_is_offered_an_nf4_base():
    from acestep.models.config import parse_model_config

    xl = parse_model_config(dict(ACESTEP_XL_DIT_CONFIG))
    config = apply_overrides(apply_named_preset(TrainingConfig(), "vram_8gb"), ["data.tensors_dir=/t"])
    estimate = estimate_vram(config, xl)
    assert estimate.total_bytes > 8 * GIB  # the XL's bf16 weights alone are 8.3 GB
    found = settings_that_fit(config, estimate, int(7.5 * GIB))
    assert found and found[0].changes == ("model.quantization=nf4",)
    assert found[0].estimate.total_bytes < estimate.total_bytes - 5 * GIB
    lokr = apply_overrides(config, ["adapter.type=lokr"])
    assert all("model.quantization=nf4" not in fit.changes
               for fit in settings_that_fit(lokr, estimate_vram(lokr, xl), int(7.5 * GIB)))


def test_nothing_fits_a_nearly_full_gpu():
    estimate = estimate_vram(BIG)
    text = message_of(lambda: check_fits(BIG, 2 * GIB, [], estimate))
    assert "No other process holds memory on this GPU." in text
    assert "makes it fit: free memory on the GPU or use a larger one" in text


# --- in the trainer --------------------------------------------------------------------------------


def fake_report(free: int, total: int, processes) -> SystemGpuReport:
    def gpu(index, free_bytes, procs):
        return GpuStatus(index, "NVIDIA GeForce RTX 4070", total, total - free_bytes, free_bytes, 10, 50, "ok",
                         tuple(procs))

    return SystemGpuReport(gpus=(gpu(0, free + GIB, [GpuProcess(7, "other-gpu-job", GIB)]), gpu(1, free, processes)),
                           driver_version="560", cuda_driver_version="12.6", message="", cpu="cpu", cpu_count=8,
                           ram_total_bytes=None, mps_available=None)


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda.mem_get_info and NVML report GPU 1 of two 12 GiB cards with `free` bytes free."""
    total = 12 * GIB
    processes = [GpuProcess(1234, "python", 8 * GIB), GpuProcess(4242, "me", GIB)]

    def set_free(free):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, total))
        monkeypatch.setattr(monitor, "read_gpus", lambda: fake_report(free, total, processes))

    monkeypatch.setattr(monitor, "own_process_ids", lambda: {4242})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    return set_free


def test_the_trainer_check_reads_the_device_and_its_processes(fake_cuda, tiny_checkpoints):
    fabric = SimpleNamespace(device=torch.device("cuda", 1), world_size=1)
    config = apply_overrides(TrainingConfig(), ["data.tensors_dir=/t", "model.checkpoint=acestep-v15-turbo"])
    fake_cuda(int(2.5 * GIB))
    assert [p.pid for p in other_processes(int(2.5 * GIB), 12 * GIB)] == [1234]  # GPU 1: nearest free memory
    estimate = check_training_memory(config, fabric, tiny_checkpoints)  # the tiny model fits
    assert estimate.parts["CUDA context"] == 0  # this process's context exists already
    assert estimate.frozen_params < 10**6  # the checkpoint's own config, not the 2B default
    fake_cuda(20 * 2**20)
    text = message_of(lambda: check_training_memory(config, fabric, tiny_checkpoints))
    assert "0.02 GiB is free" in text and "python (pid 1234) 8.00 GiB" in text
    assert "pid 4242" not in text and "other-gpu-job" not in text


def test_the_trainer_check_counts_the_attention_kernel_of_the_gpu_generation(fake_cuda, tiny_checkpoints,
                                                                               monkeypatch):
    fabric = SimpleNamespace(device=torch.device("cuda", 1), world_size=1)
    config = apply_overrides(TrainingConfig(), ["data.tensors_dir=/t", "model.checkpoint=acestep-v15-turbo"])
    fake_cuda(10 * GIB)
    ada = check_training_memory(config, fabric, tiny_checkpoints)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    hopper = check_training_memory(config, fabric, tiny_checkpoints)
    assert ada.options["kernels"].masked_attention == "repeated"  # K/V heads repeated for the efficient kernel
    assert hopper.options["kernels"].masked_attention == "flash"
    assert hopper.parts["activations"] < ada.parts["activations"]


@pytest.mark.parametrize("total_gib", [None, 12.0])
def test_the_out_of_memory_message_gives_the_estimate_and_settings_that_would_fit(tmp_path, total_gib):
    config = apply_named_preset(apply_overrides(TrainingConfig(), [
        "data.tensors_dir=t", f"model.checkpoints_dir={tmp_path}"]), "vram_24gb_plus")  # no model on disk: 2B
    total = int(total_gib * GIB) if total_gib else None
    message = out_of_memory_message(config, total, 120, tmp_path / "run",
                                    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB"))
    assert message.startswith("Out of GPU memory in the step after step 120 (CUDA out of memory. Tried to allocate")
    estimate_line = "The estimate for these settings is 13.32 GiB"
    assert estimate_line + ("; this GPU has 12.00 GiB in all, other programs included." if total else ".") in message
    fits = [float(gib) for gib in re.findall(r"\(about ([\d.]+) GiB\)", message)]
    # a fifth under the smaller of the estimate and the card, the fixed CUDA context aside
    assert fits and max(fits) < (0.8 * 12 + 0.5 if total else 0.8 * 13.32 + 0.5)
    assert "Settings that would fit: --set run.gradient_checkpointing=true (about" in message
    assert f"continue with --resume {tmp_path / 'run'}" in message
