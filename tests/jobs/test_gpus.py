"""Which GPUs a job takes: device texts and run.devices to CUDA indices, shared GPUs, and their names."""

from __future__ import annotations

import pytest

from acestep.errors import ConfigError, JobError
from acestep.jobs.gpus import ALL_GPUS, gpus_text, job_gpus, shared_gpus, training_gpus


def test_a_device_text_gives_the_cuda_indices_the_command_then_uses():
    assert job_gpus("cuda:1") == {1} and job_gpus(" CUDA:3 ") == {3}
    # "auto" and no device: the commands pick torch's "cuda", which is GPU 0; a Mac's mps is its one GPU
    assert job_gpus("cuda") == job_gpus("auto") == job_gpus("") == job_gpus(None) == job_gpus("mps") == {0}
    assert job_gpus("cpu") == frozenset() and not job_gpus(" CPU ")  # not a GPU job
    with pytest.raises(JobError, match="Device 'gpu0': expected auto, cuda, cuda:N, mps or cpu"):
        job_gpus("gpu0")


def test_run_devices_give_the_gpus_of_a_training_run():
    assert training_gpus(1) == {0} and training_gpus(3) == {0, 1, 2}  # a count: the first n GPUs
    assert training_gpus("1") == {1} and training_gpus("0, 2") == {0, 2}  # a list: those GPUs
    assert training_gpus("auto") == training_gpus("AUTO") == ALL_GPUS  # Lightning takes every GPU it finds
    with pytest.raises(ConfigError, match="run.devices"):
        training_gpus(0)


def test_shared_gpus_and_their_names():
    assert shared_gpus(frozenset({0, 1}), frozenset({1, 2})) == {1}
    assert shared_gpus(frozenset({0}), frozenset({1})) == frozenset()
    assert shared_gpus(ALL_GPUS, frozenset({1})) == shared_gpus(frozenset({1}), ALL_GPUS) == {1}
    assert shared_gpus(ALL_GPUS, ALL_GPUS) == ALL_GPUS
    assert shared_gpus(ALL_GPUS, frozenset()) == frozenset()  # a CPU job shares no GPU, not even with "all"
    assert gpus_text(frozenset({1})) == "GPU 1" and gpus_text(frozenset({1, 0})) == "GPUs 0,1"
    assert gpus_text(ALL_GPUS) == "all GPUs" and gpus_text(frozenset()) == ""
