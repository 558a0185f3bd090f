"""The training loss between two logs (and over an epoch), summed per sample on the device so
that the loop syncs with the GPU only when it logs: the one host read per log interval.

    interval = LossInterval(device)
    interval.add(per_sample_losses, batch_size)      # every batch, no sync
    loss, samples, seconds = interval.read(fabric)   # at a log: the mean over every rank
"""

from __future__ import annotations

import time

import torch


class LossInterval:
    """Per-sample losses summed on the device; read (one sync) only at log time."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sum = torch.zeros((), device=device, dtype=torch.float64)
        self.count = 0
        self.epoch_sum = torch.zeros((), device=device, dtype=torch.float64)
        self.epoch_count = 0
        self.started = time.perf_counter()

    def state(self) -> dict:
        """The running sums (a resume continues the loss curve exactly)."""
        return {"sum": self.sum.item(), "count": self.count, "epoch_sum": self.epoch_sum.item(),
                "epoch_count": self.epoch_count}

    def snapshot(self) -> tuple:
        """The running sums as device copies (taken without a host sync)."""
        return self.sum.clone(), self.count, self.epoch_sum.clone(), self.epoch_count

    def restore_snapshot(self, snapshot: tuple) -> None:
        total, self.count, epoch_total, self.epoch_count = snapshot
        self.sum.copy_(total)
        self.epoch_sum.copy_(epoch_total)

    def restore(self, state: dict) -> None:
        self.sum.fill_(state["sum"])
        self.epoch_sum.fill_(state["epoch_sum"])
        self.count, self.epoch_count = state["count"], state["epoch_count"]

    def add(self, per_sample: torch.Tensor, size: int) -> None:
        total = per_sample.double().sum()
        self.sum += total
        self.epoch_sum += total
        self.count += size
        self.epoch_count += size

    def read(self, fabric) -> tuple[float | None, int, float]:
        loss = global_mean(fabric, self.sum, self.count)
        samples, seconds = self.count * fabric.world_size, time.perf_counter() - self.started
        self.sum.zero_()
        self.count = 0
        self.started = time.perf_counter()
        return loss, samples, seconds

    def read_epoch(self, fabric) -> float | None:
        loss = global_mean(fabric, self.epoch_sum, self.epoch_count)
        self.epoch_sum.zero_()
        self.epoch_count = 0
        return loss


def global_mean(fabric, total: torch.Tensor, count: int) -> float | None:
    both = torch.stack([total, torch.tensor(float(count), device=total.device, dtype=total.dtype)])
    if fabric.world_size > 1:
        both = fabric.all_reduce(both, reduce_op="sum")
    value, n = both.tolist()
    return value / n if n else None
