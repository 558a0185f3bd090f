"""What the jobs tests share: a job manager over a fresh jobs folder that leaves no process behind."""

import pytest

from acestep.jobs import JobManager


@pytest.fixture
def manager(tmp_path):
    manager = JobManager(tmp_path / "jobs")
    yield manager
    for job in manager.list_jobs():  # leave no process behind
        if not job.finished:
            manager.stop(job.id, force=True)
    for job in manager.list_jobs():
        manager.wait(job.id, timeout=10)
