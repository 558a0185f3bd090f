"""The adapter's moving average (optimizer.ema_decay): its arithmetic, the swap and its state."""

import pytest
import torch
from torch import nn

from acestep.errors import TrainingError
from acestep.training.averaging import AdapterAverage


def parameters() -> list[nn.Parameter]:
    generator = torch.Generator().manual_seed(0)
    return [nn.Parameter(torch.randn(3, 4, generator=generator)), nn.Parameter(torch.randn(5, generator=generator))]


def test_each_update_moves_the_average_by_the_warmed_up_decay():
    weights = parameters()
    average = AdapterAverage(weights, decay=0.9)
    expected = [w.detach().double().clone() for w in weights]
    decays = []
    for step in range(100):
        with torch.no_grad():
            for w in weights:
                w.add_(torch.full_like(w, 0.25 * (step % 3 - 1)))
        decays.append(average.current_decay())
        average.update()
        d = min(0.9, (1 + step) / (10 + step))
        expected = [d * e + (1 - d) * w.detach().double() for e, w in zip(expected, weights, strict=True)]
    assert decays[:3] == pytest.approx([1 / 10, 2 / 11, 3 / 12])  # the warm-up
    assert decays[79] < 0.9 == decays[80] == decays[-1]  # then the decay
    assert average.updates == 100
    for got, want in zip(average.average, expected, strict=True):
        assert torch.allclose(got.double(), want, atol=1e-6)


def test_the_average_is_swapped_in_and_the_weights_come_back_bit_for_bit():
    weights = parameters()
    average = AdapterAverage(weights, decay=0.5)
    with torch.no_grad():
        for w in weights:
            w.mul_(3.0).add_(0.1)
    average.update()
    before = [w.detach().clone() for w in weights]
    with average.swapped_in():
        assert all(torch.equal(w, a) for w, a in zip(weights, average.average, strict=True))
        assert not torch.equal(weights[0], before[0])
    assert all(torch.equal(w, b) for w, b in zip(weights, before, strict=True))
    with pytest.raises(RuntimeError, match="inside"), average.swapped_in():  # also after an error inside
        raise RuntimeError("inside")
    assert all(torch.equal(w, b) for w, b in zip(weights, before, strict=True))


def test_the_state_restores_the_average_exactly_and_refuses_another_adapter():
    weights = parameters()
    average = AdapterAverage(weights, decay=0.99)
    for _ in range(3):
        with torch.no_grad():
            weights[0].add_(1.0)
        average.update()
    again = AdapterAverage(parameters(), decay=0.99)
    again.restore(average.state(), "checkpoint")
    assert again.updates == 3 and all(torch.equal(a, b) for a, b in zip(again.average, average.average, strict=True))
    other = AdapterAverage([nn.Parameter(torch.zeros(2, 2))], decay=0.99)
    with pytest.raises(TrainingError, match="checkpoint: the adapter average it holds does not fit"):
        other.restore(average.state(), "checkpoint")


def test_a_decay_outside_0_to_1_is_refused():
    for decay in (0.0, 1.0, 1.5):
        with pytest.raises(TrainingError, match="ema_decay"):
            AdapterAverage(parameters(), decay)
