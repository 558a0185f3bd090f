"""The training loss between two logs (and over an epoch), summed per sample on the device so
that the loop syncs with the GPU only when it logs: the one host read per log interval. The
gradient norms of the interval's optimizer steps are gathered the same way.

    interval = LossInterval(device)
    interval.add(per_sample_losses, batch_size)      # every batch, no sync
    interval.add_grad_norm(norm)                     # every optimizer step taken, no sync
    loss, samples, seconds = interval.read(fabric)   # at a log: the mean over every rank
    mean_norm, max_norm = interval.read_grad_norm()  # and the norms' mean and largest
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
        self.norm_sum = torch.zeros((), device=device, dtype=torch.float64)
        self.norm_max = torch.zeros((), device=device, dtype=torch.float64)
        self.norm_steps = 0
        self.started = time.perf_counter()

    def state(self) -> dict:
        """The running sums (a resume continues the loss curve, and the norms, exactly)."""
        return {"sum": self.sum.item(), "count": self.count, "epoch_sum": self.epoch_sum.item(),
                "epoch_count": self.epoch_count, "norm_sum": self.norm_sum.item(),
                "norm_max": self.norm_max.item(), "norm_steps": self.norm_steps}

    def snapshot(self) -> tuple:
        """The running sums as device copies (taken without a host sync)."""
        return (self.sum.clone(), self.count, self.epoch_sum.clone(), self.epoch_count, self.norm_sum.clone(),
                self.norm_max.clone(), self.norm_steps)

    def restore_snapshot(self, snapshot: tuple) -> None:
        total, self.count, epoch_total, self.epoch_count, norm_total, norm_max, self.norm_steps = snapshot
        self.sum.copy_(total)
        self.epoch_sum.copy_(epoch_total)
        self.norm_sum.copy_(norm_total)
        self.norm_max.copy_(norm_max)

    def restore(self, state: dict) -> None:
        self.sum.fill_(state["sum"])
        self.epoch_sum.fill_(state["epoch_sum"])
        self.count, self.epoch_count = state["count"], state["epoch_count"]
        # checkpoints written before the norms were gathered have none: the interval starts without them
        self.norm_sum.fill_(state.get("norm_sum", 0.0))
        self.norm_max.fill_(state.get("norm_max", 0.0))
        self.norm_steps = state.get("norm_steps", 0)

    def add(self, per_sample: torch.Tensor, size: int) -> None:
        total = per_sample.double().sum()
        self.sum += total
        self.epoch_sum += total
        self.count += size
        self.epoch_count += size

    def add_grad_norm(self, norm: torch.Tensor) -> None:
        """The gradient norm of an optimizer step (before clipping; the same on every rank)."""
        norm = norm.detach().to(self.norm_sum.device, torch.float64)
        self.norm_sum += norm
        torch.maximum(self.norm_max, norm, out=self.norm_max)
        self.norm_steps += 1

    def read_grad_norm(self) -> tuple[float | None, float | None]:
        """The mean and the largest gradient norm of the optimizer steps since the last read (None,
        None without any); one host read."""
        total, largest = torch.stack([self.norm_sum, self.norm_max]).tolist()
        steps = self.norm_steps
        self.norm_sum.zero_()
        self.norm_max.zero_()
        self.norm_steps = 0
        return (total / steps, largest) if steps else (None, None)

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
