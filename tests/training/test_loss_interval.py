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
    interval.add_grad_norm(torch.tensor(0.5))
    snapshot, state = interval.snapshot(), interval.state()
    interval.add(torch.tensor([100.0]), 1)  # a step that ran out of memory, say
    interval.add_grad_norm(torch.tensor(9.0))
    interval.restore_snapshot(snapshot)
    assert interval.read(ONE_PROCESS)[0] == pytest.approx(3.0)
    assert interval.read_grad_norm() == (0.5, 0.5)
    resumed = LossInterval(torch.device("cpu"))
    resumed.restore(state)
    assert resumed.state() == state and resumed.read_epoch(ONE_PROCESS) == pytest.approx(3.0)
    assert resumed.read_grad_norm() == (0.5, 0.5)


def test_the_gradient_norms_are_read_as_their_mean_and_largest_per_interval():
    interval = LossInterval(torch.device("cpu"))
    assert interval.read_grad_norm() == (None, None)  # no optimizer step yet
    for norm in (1.0, 3.0, 2.0):
        interval.add_grad_norm(torch.tensor(norm, dtype=torch.bfloat16))
    assert interval.read_grad_norm() == (pytest.approx(2.0), 3.0)
    interval.add_grad_norm(torch.tensor(0.25))
    assert interval.read_grad_norm() == (0.25, 0.25)  # the largest starts again at each read


def test_a_checkpoint_from_before_the_norms_were_gathered_restores_without_them():
    interval = LossInterval(torch.device("cpu"))
    interval.restore({"sum": 6.0, "count": 2, "epoch_sum": 6.0, "epoch_count": 2})
    assert interval.read(ONE_PROCESS)[0] == pytest.approx(3.0) and interval.read_grad_norm() == (None, None)
