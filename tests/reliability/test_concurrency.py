"""Two clients at once: two GPU jobs started in the same instant give one running and one queued
(from two job managers over the same folder, as two app processes would have); and two saves of
the same dataset give one success and one stale-data refusal."""

import sys
import threading

import pytest

from acestep.jobs import JobManager

from .conftest import record

SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_two_gpu_jobs_started_at_once_give_one_running_and_one_queued(tmp_path):
    root = tmp_path / "jobs"
    barrier = threading.Barrier(2)
    submitted = []

    def client(name):
        manager = JobManager(root)  # each client its own manager, as separate processes would
        barrier.wait()
        submitted.append(manager.submit("train", SLEEP, needs_gpu=True, label=name, cwd=tmp_path))

    threads = [threading.Thread(target=client, args=(name,)) for name in ("ann", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    manager = JobManager(root)
    try:
        statuses = sorted(job.status for job in manager.poll())
        record("concurrency: training", "pairs of training starts at once", 1, "not one running + one queued",
               int(statuses != ["queued", "running"]))
        assert len(submitted) == 2 and statuses == ["queued", "running"]
        queued = next(job for job in manager.list_jobs() if job.status == "queued")
        assert manager.stop(queued.id).status == "cancelled"
    finally:
        for job in manager.list_jobs():
            if not job.finished:
                manager.stop(job.id, timeout=5)
        for job in manager.list_jobs():
            manager.wait(job.id, timeout=60)


def test_two_saves_of_one_dataset_at_once_give_one_success_and_one_refusal(tmp_path):
    from acestep.dataset import load_dataset_revision, save_dataset, save_dataset_revision
    from acestep.errors import DatasetError
    from acestep.dataset.schema import Dataset

    path = tmp_path / "songs.json"
    save_dataset(Dataset(name="songs", samples=[]), path)
    results, barrier = [], threading.Barrier(2)

    def client(name):
        dataset, revision = load_dataset_revision(path)
        dataset.name = name
        barrier.wait()
        try:
            save_dataset_revision(dataset, path, expected_revision=revision)
            results.append(("saved", name))
        except DatasetError as error:
            results.append(("refused", str(error)))

    threads = [threading.Thread(target=client, args=(name,)) for name in ("ann", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    outcomes = sorted(kind for kind, _ in results)
    record("concurrency: saves", "pairs of dataset saves at once", 1, "not one saved + one refused",
           int(outcomes != ["refused", "saved"]))
    assert outcomes == ["refused", "saved"]
    [winner] = [name for kind, name in results if kind == "saved"]
    [message] = [text for kind, text in results if kind == "refused"]
    assert "changed by someone else" in message and "Reload" in message
    assert load_dataset_revision(path)[0].name == winner


@pytest.fixture(autouse=True)
def _no_leftover_threads():
    yield
    assert threading.active_count() < 10
