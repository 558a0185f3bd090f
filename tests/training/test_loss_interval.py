"""The loss between logs: summed on the device per sample, read as the mean of every sample."""

from types import SimpleNamespace

import pytest
import torch

from acestep.training.loss_interval import LossInterval

ONE_PROCESS = SimpleNamespace(world_size=1)


def test_the_logged_loss_is_the_mean_per_sample_and_the_epoch_keeps_its_own_sums():
    interval = LossInterval(torch.device("cpu"))
    interval.add(torch.tensor([1.0, 2.0]), 2)
    interval.add(torch.tensor([6.0]), 1)
    loss, samples, seconds = interval.read(ONE_PROCESS)
    assert loss == pytest.approx(3.0) and samples == 3 and seconds >= 0
    assert interval.read(ONE_PROCESS)[0] is None  # nothing since the last read
    interval.add(torch.tensor([3.0]), 1)
    assert interval.read_epoch(ONE_PROCESS) == pytest.approx(3.0)  # (1 + 2 + 6 + 3) / 4
    assert interval.read_epoch(ONE_PROCESS) is None


def test_a_snapshot_and_a_saved_state_bring_the_sums_back():
    interval = LossInterval(torch.device("cpu"))
    interval.add(torch.tensor([2.0, 4.0]), 2)
    snapshot, state = interval.snapshot(), interval.state()
    interval.add(torch.tensor([100.0]), 1)  # a step that ran out of memory, say
    interval.restore_snapshot(snapshot)
    assert interval.read(ONE_PROCESS)[0] == pytest.approx(3.0)
    resumed = LossInterval(torch.device("cpu"))
    resumed.restore(state)
    assert resumed.state() == state and resumed.read_epoch(ONE_PROCESS) == pytest.approx(3.0)
