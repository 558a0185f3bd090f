"""An exponential moving average (EMA) of the adapter's weights (`optimizer.ema_decay`).

After each optimizer step the average moves toward the weights: `average += (1 - d) * (weights -
average)`, with `d = min(ema_decay, (1 + n) / (10 + n))` after n earlier updates. The warm-up
keeps the first steps from pinning the average to the adapter's starting point (LoRA's B starts
at zero, so an average that began there would lag far behind a short run); from about
`10 / (1 - ema_decay)` steps on, `d` is `ema_decay`.

The weights keep training as they are; the average is what the run hands out. `swapped_in()` puts
it into the adapter's parameters for a while (saving an adapter, the validation loss, previews)
and puts the weights back exactly. It lives in fp32 beside the adapter and goes into every
checkpoint, so a resume continues it bit for bit.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from acestep.errors import TrainingError

WARMUP_OFFSET = 10  # d = (1 + n) / (10 + n) while that is below the decay


class AdapterAverage:
    """The EMA of `parameters` (the adapter's trainable weights) with the given decay (0 < decay < 1)."""

    def __init__(self, parameters: list[nn.Parameter], decay: float):
        if not 0 < decay < 1:
            raise TrainingError(f"optimizer.ema_decay must be more than 0 and less than 1, found {decay}")
        self.parameters = list(parameters)
        self.decay = decay
        self.updates = 0
        self.average = [p.detach().float().clone() for p in self.parameters]

    def current_decay(self) -> float:
        """The decay the next update uses (see the module docstring)."""
        return min(self.decay, (1 + self.updates) / (WARMUP_OFFSET + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average toward the weights; called after each optimizer step that was taken."""
        weight = 1.0 - self.current_decay()
        torch._foreach_lerp_(self.average, [p.detach().float() for p in self.parameters], weight)
        self.updates += 1

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The average in the adapter's parameters inside the block; the weights exactly back after it."""
        with torch.no_grad():
            weights = [p.detach().clone() for p in self.parameters]
            for parameter, average in zip(self.parameters, self.average, strict=True):
                parameter.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for parameter, weight in zip(self.parameters, weights, strict=True):
                    parameter.copy_(weight)

    def state(self) -> dict:
        """The decay, the update count and the average (fp32)."""
        return {**self.counts(), "average": list(self.average)}

    def counts(self) -> dict:
        """What a checkpoint stores beside the adapter folder, which holds the average: the decay
        and the update count."""
        return {"decay": self.decay, "updates": self.updates}

    def restore(self, state: dict, source: str) -> None:
        """Put back a `state()` (a resume). Raises TrainingError naming `source` when it does not
        fit this adapter (another adapter's checkpoint)."""
        averages = state.get("average") if isinstance(state, dict) else None
        if (not isinstance(averages, list) or len(averages) != len(self.average)
                or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(averages, self.average, strict=True))):
            raise TrainingError(f"{source}: the adapter average it holds does not fit this adapter "
                                f"({len(self.average)} weights). Resume the run with the settings it was started with.")
        self.updates = int(state["updates"])
        device = self.average[0].device if self.average else None
        self.average = [a.to(device=device, dtype=torch.float32).clone() for a in averages]
