"""The queue's rule: which queued jobs may start, and what a waiting job waits for.

A CPU job starts at once. A GPU job starts when no active job shares a GPU with it, and no GPU job
queued before it does either: a waiting job holds its GPUs against the jobs behind it, so a stream
of later jobs that keep fitting never starves it (a job waiting for GPU 0 holds back a later GPU-0
job, while a later GPU-1 job starts). A job on ALL_GPUS shares with every GPU job.
"""

from __future__ import annotations

from collections.abc import Sequence

from acestep.jobs.gpus import GpuSet, shared_gpus
from acestep.jobs.store import QUEUED, Job


def ready_to_start(jobs: Sequence[Job]) -> list[Job]:
    """The queued jobs that may start now, in queue order; `jobs` is every job in queue order
    (`JobStore.read_all`). Assumes each of them starts: one that cannot start frees its GPUs, so ask again."""
    held: list[GpuSet] = [job.gpu_set for job in jobs if job.active]
    ready = []
    for job in jobs:
        if job.status != QUEUED:
            continue
        if not any(shared_gpus(job.gpu_set, other) for other in held):
            ready.append(job)
        held.append(job.gpu_set)  # started or waiting, it holds its GPUs against the jobs behind it
    return ready


def waits_for(job: Job, jobs: Sequence[Job]) -> list[tuple[Job, GpuSet]]:
    """What a queued job waits for: the active jobs, and the jobs queued before it, that share a
    GPU with it, each with the GPUs they share. Empty for a job that is not queued or may start."""
    if job.status != QUEUED:
        return []
    blockers = []
    before = True
    for other in jobs:
        if other.id == job.id:
            before = False
            continue
        shared = shared_gpus(job.gpu_set, other.gpu_set)
        if shared and (other.active or (before and other.status == QUEUED)):
            blockers.append((other, shared))
    return blockers
