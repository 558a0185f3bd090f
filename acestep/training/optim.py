"""Optimizers and learning-rate schedules, and the optimizer step count of a run.

A requested optimizer that cannot be built is an error, never a substitution: a peer trainer
silently used AdamW when bitsandbytes was missing, so "8-bit AdamW" runs were nothing of the kind.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from acestep.errors import TrainingError

OPTIMIZERS = ("adamw", "adamw8bit", "adafactor", "prodigy")
SCHEDULERS = ("cosine", "cosine_with_restarts", "linear", "constant", "constant_with_warmup")


def _materialize(params: Iterable[Any]) -> list[Any]:
    """Params as a list (tensors or param-group dicts), so they can be inspected and still passed on."""
    params = list(params)
    if not params:
        raise TrainingError("the optimizer got no parameters to train (is the adapter attached?)")
    return params


def _all_cuda(params: list[Any]) -> bool:
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    return bool(tensors) and all(isinstance(p, torch.Tensor) and p.is_cuda for p in tensors)


def _missing_package(optimizer: str, package: str, pip_name: str, error: Exception) -> TrainingError:
    return TrainingError(
        f"optimizer '{optimizer}' needs the {package} package, which is missing or failed to import "
        f"({type(error).__name__}: {error}). Install it into the project environment with "
        f"`pip install {pip_name}`, or choose another optimizer ({', '.join(OPTIMIZERS)}).")


def build_optimizer(params: Iterable[Any], name: str, lr: float, weight_decay: float = 0.01,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.Optimizer:
    """Build the optimizer `name` (one of `OPTIMIZERS`) over `params` (tensors or param groups).

    - adamw: `torch.optim.AdamW`, fused when every parameter is on CUDA.
    - adamw8bit: `bitsandbytes.optim.AdamW8bit` (8-bit state for tensors of 4096+ elements).
    - adafactor: `transformers.optimization.Adafactor` with the given fixed lr (relative_step,
      scale_parameter and warmup_init off); `betas` and `eps` do not apply to it.
    - prodigy: `prodigyopt.Prodigy`, which estimates the step size itself: `lr` is a multiplier
      on that estimate and should be about 1.0 (a typical AdamW lr such as 1e-4 barely trains).
    Raises TrainingError for an unknown name, a non-positive lr, no parameters, or a package that
    is missing or fails to import (naming it and the pip command; there is no fallback).
    """
    if name not in OPTIMIZERS:
        raise TrainingError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    if not lr > 0:
        raise TrainingError(f"the learning rate must be > 0, got {lr!r}")
    params = _materialize(params)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                 fused=True if _all_cuda(params) else None)
    if name == "adamw8bit":
        try:
            import bitsandbytes  # the package itself first: a cached submodule would hide its failure

            AdamW8bit = bitsandbytes.optim.AdamW8bit
        except Exception as error:  # an ImportError, or a CUDA/CPU library setup failure inside bitsandbytes
            raise _missing_package(name, "bitsandbytes", "bitsandbytes", error) from error
        return AdamW8bit(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if name == "adafactor":
        try:
            from transformers.optimization import Adafactor
        except Exception as error:
            raise _missing_package(name, "transformers", "transformers", error) from error
        return Adafactor(params, lr=lr, relative_step=False, scale_parameter=False, warmup_init=False,
                         weight_decay=weight_decay)
    try:
        from prodigyopt import Prodigy
    except Exception as error:
        raise _missing_package(name, "prodigyopt", "prodigyopt", error) from error
    return Prodigy(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def lr_lambda(name: str, warmup_steps: int, total_steps: int, restarts: int = 1) -> Callable[[int], float]:
    """The multiplier of the base lr at optimizer step s (0-based), for `torch.optim.lr_scheduler.LambdaLR`.

    - Warmup (every scheduler but "constant", which has none): (s + 1) / (warmup + 1) for
      s < warmup, so the first step already moves and the ramp reaches 1 exactly at s = warmup.
    - Then, with progress = (s − warmup) / (total − warmup): cosine 0.5·(1 + cos(π·progress));
      cosine_with_restarts the same over `restarts` cycles (hard restarts back to 1);
      linear 1 − progress; constant_with_warmup 1.
    - At and after `total_steps` the decaying schedules give 0 (never negative); "constant" and
      "constant_with_warmup" do not depend on `total_steps`.
    - warmup >= total: the whole run is warmup (the ramp is not shortened to fit); the decaying
      ones then give 0 from `total_steps` on. The decay has no length: nothing divides by zero.
    Values are always in [0, 1]. Raises TrainingError for an unknown name or bad step counts.
    """
    if name not in SCHEDULERS:
        raise TrainingError(f"unknown lr scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")
    if int(warmup_steps) != warmup_steps or warmup_steps < 0:
        raise TrainingError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
    if int(total_steps) != total_steps or total_steps < 1:
        raise TrainingError(f"total_steps must be an integer >= 1, got {total_steps!r}")
    if int(restarts) != restarts or restarts < 1:
        raise TrainingError(f"restarts (cosine cycles) must be an integer >= 1, got {restarts!r}")
    warmup, total, cycles = int(warmup_steps), int(total_steps), int(restarts)
    decay_length = max(total - warmup, 1)

    def multiplier(step: int) -> float:
        if name == "constant":
            return 1.0
        step = max(int(step), 0)
        if name == "constant_with_warmup":
            return (step + 1) / (warmup + 1) if step < warmup else 1.0
        if step >= total:
            return 0.0
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min((step - warmup) / decay_length, 1.0)
        if name == "linear":
            return max(0.0, 1.0 - progress)
        if name == "cosine_with_restarts":
            progress = (cycles * progress) % 1.0
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return multiplier


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, warmup_steps: int, total_steps: int,
                    restarts: int = 1) -> torch.optim.lr_scheduler.LambdaLR:
    """A `LambdaLR` over `lr_lambda(name, warmup_steps, total_steps, restarts)`; step it once per optimizer step.

    Its `state_dict()` holds the step count (not the lambda), so a resume rebuilds the scheduler
    from the same config and loads the state. Raises TrainingError as `lr_lambda` does.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(name, warmup_steps, total_steps, restarts))
