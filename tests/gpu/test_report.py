"""The text of `acestep-trainer gpu`: GPUs, the recommended preset per GPU, and a config's estimate
against each GPU's free memory (fake NVML reports; no GPU needed)."""

import re
from pathlib import Path

import pytest

from acestep.errors import ConfigError
from acestep.gpu.estimate import GIB
from acestep.gpu.monitor import GpuProcess, GpuStatus, SystemGpuReport
from acestep.gpu.report import gpu_command_report
from acestep.training.config import TrainingConfig, apply_overrides, save_config


def report_of(*gpus) -> SystemGpuReport:
    return SystemGpuReport(gpus=tuple(gpus), driver_version="560.35", cuda_driver_version="12.6",
                           message="" if gpus else "no NVIDIA GPU (the NVIDIA driver reports 0 GPUs)", cpu="x86_64",
                           cpu_count=16, ram_total_bytes=64 * GIB, mps_available=None)


def gpu(index, name, total_gib, free_gib, processes=(), capability=None):
    total, free = int(total_gib * GIB), int(free_gib * GIB)
    return GpuStatus(index, name, total, total - free, free, 3, 40, "ok", tuple(processes),
                     compute_capability=capability)


def write_config(tmp_path, *overrides):
    config = apply_overrides(TrainingConfig(), ["data.tensors_dir=tensors", *overrides])
    return save_config(config, tmp_path / "run.toml")


def test_each_gpu_gets_its_tier():
    text = gpu_command_report(None, report=report_of(gpu(0, "NVIDIA GeForce RTX 4090", 23.6, 20),
                                                     gpu(1, "NVIDIA GeForce RTX 4060", 7.6, 7.0)))
    assert "NVIDIA driver 560.35" in text  # the monitor's report comes first
    assert "GPU 0 (NVIDIA GeForce RTX 4090): recommended preset vram_24gb_plus" in text
    assert "GPU 1 (NVIDIA GeForce RTX 4060): recommended preset vram_8gb" in text
    assert "Training config" not in text


def test_without_a_gpu_the_quick_test_is_recommended(tmp_path):
    text = gpu_command_report(write_config(tmp_path), report=report_of())
    assert "Recommended preset: quick_test" in text
    assert "Estimated peak GPU memory" in text and "No NVIDIA GPU to compare it with." in text


def test_a_config_is_compared_with_each_gpu_and_gets_advice_where_it_does_not_fit(tmp_path, tiny_checkpoints):
    path = write_config(tmp_path, "data.batch_size=3", "optimizer.name=adamw")
    busy = gpu(1, "NVIDIA GeForce RTX 4070", 12, 6.0, [GpuProcess(77, "game", 6 * GIB)])
    text = gpu_command_report(path, tiny_checkpoints, report=report_of(gpu(0, "NVIDIA H100", 79.2, 79), busy))
    assert f"Training config {path}:" in text and "batch 3 x 60 s" in text
    assert "is not on disk" not in text  # the tiny checkpoint's own config gave the shapes
    assert "GPU 0: fits (79.00 GiB free" in text
    assert re.search(r"Disk: a checkpoint is about [\d.]+ [KM]iB; the run writes up to [\d.]+ MiB \(4 checkpoints at "
                     rf"once, best/ and final/\) into {re.escape(str(Path.cwd() / 'runs'))}, whose disk has [\d.]+ GiB "
                     r"free\.", text)  # the run's folder resolved as `train` resolves it


def test_the_2b_default_is_said_when_the_model_is_missing(tmp_path):
    path = write_config(tmp_path, "data.batch_size=3")
    text = gpu_command_report(path, tmp_path / "no-models", ["adapter.rank=32"],
                              report=report_of(gpu(0, "NVIDIA GeForce RTX 4070", 12, 10)))
    assert "is not on disk" in text and "The estimate is for the 2B ACE-Step 1.5 DiT." in text
    assert "lora rank 32" in text  # the --set overrides apply
    assert "GPU 0: does not fit now (10.00 GiB free" in text
    assert "  would fit: --set run.gradient_checkpointing=true (about" in text


def test_each_gpu_is_compared_with_the_estimate_for_its_generation(tmp_path):
    """Same free memory, different generations: Hopper's cuDNN attention takes the grouped K/V heads
    of the sliding-window layers as they are, an Ada card's efficient kernel keeps them repeated to
    every query head, so a config without checkpointing fits on the first and not on the second."""
    path = write_config(tmp_path, "data.batch_size=4", "run.gradient_checkpointing=false")
    text = gpu_command_report(path, tmp_path / "no-models", report=report_of(
        gpu(0, "NVIDIA H100", 80, 13.8, capability=(9, 0)), gpu(1, "NVIDIA GeForce RTX 4090", 23.6, 13.8,
                                                             capability=(8, 9))))
    assert "GPU 0: fits (13.80 GiB free" in text
    assert "GPU 1: does not fit now (13.80 GiB free" in text


def test_the_run_plan_follows_the_estimate_or_says_why_there_is_none(tmp_path, monkeypatch):
    from acestep.preprocess.manifest import Manifest, ManifestSample, write_manifest

    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path, "data.batch_size=2", "run.epochs=100")
    text = gpu_command_report(path, tmp_path / "no-models", report=report_of())
    assert (f"Run plan: {tmp_path / 'tensors' / 'manifest.json'} does not exist: {tmp_path / 'tensors'} is not a "
            "preprocessed tensors folder") in text
    samples = [ManifestSample(f"s{i}", f"s{i}.wav", f"s{i}.safetensors", 3000, 120.0, "h", "k") for i in range(6)]
    write_manifest(tmp_path / "tensors", Manifest(model={}, settings={}, samples=samples))
    text = gpu_command_report(path, tmp_path / "no-models", report=report_of(gpu(0, "A", 24, 20), gpu(1, "B", 24, 20)))
    plan = text.split("Run plan: ")[1]
    assert plan.startswith("6 song(s) train, none held out for validation. Per epoch: 3 batch(es) of 2, ")
    assert "300 optimizer steps in all (100 epochs)" in plan  # devices=1: one process, whatever the GPUs
    assert "Crops of 60 s show 50% of the songs' 12.0 minutes per epoch" in plan
    assert "  note: 300 steps is below the 2,000 to 4,000" in plan


def test_set_without_a_config_estimates_the_defaults_with_those_values_as_train_takes_them(tmp_path, monkeypatch):
    """`gpu --set ...` without --config printed no estimate at all: the values were dropped."""
    monkeypatch.chdir(tmp_path)
    gpus = report_of(gpu(0, "NVIDIA GeForce RTX 4070", 12, 10))
    text = gpu_command_report(None, tmp_path / "no-models", ["data.tensors_dir=tensors", "adapter.rank=32"],
                              report=gpus)
    title = "Training config (the defaults with --set data.tensors_dir=tensors --set adapter.rank=32):"
    assert title in text and "lora rank 32" in text
    from_file = gpu_command_report(write_config(tmp_path, "adapter.rank=32"), tmp_path / "no-models", report=gpus)
    assert text.split(title)[1] == from_file.split(f"Training config {tmp_path / 'run.toml'}:")[1]
    with pytest.raises(ConfigError, match="data.tensors_dir is required"):  # as `train --set adapter.rank=32`
        gpu_command_report(None, tmp_path / "no-models", ["adapter.rank=32"], report=gpus)
