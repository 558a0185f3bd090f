"""job.json: the GPUs a job takes round-trip, jobs stored before they recorded GPUs load, bad values are refused."""

from __future__ import annotations

import json

import pytest

from acestep.jobs.gpus import ALL_GPUS
from acestep.jobs.store import JOB_FILE, Job, JobError, JobStore

# A job.json as the store wrote it before jobs recorded their GPUs (no "gpus" field).
OLD_JOB = {
    "id": "20250101-000000-train-abc123", "kind": "train", "argv": ["acestep-trainer", "train"], "needs_gpu": True,
    "status": "queued", "label": "night run", "owner": "ana", "cwd": "/tmp", "env": {}, "events_path": "",
    "stop_file": None, "created": 1.0, "started": None, "ended": None, "pid": None, "pid_start": None,
    "runner_pid": None, "runner_start": None, "exit_code": None, "message": "", "stop_requested": None,
    "kill_at": None, "version": 1,
}


def write_job_file(store: JobStore, data: dict) -> None:
    folder = store.job_dir(data["id"])
    folder.mkdir(parents=True)
    (folder / JOB_FILE).write_text(json.dumps(data))


def test_an_old_job_file_without_gpus_loads_as_all_gpus(tmp_path):
    store = JobStore(tmp_path)
    write_job_file(store, OLD_JOB)
    write_job_file(store, {**OLD_JOB, "id": "20250101-000001-split-abc123", "kind": "split", "needs_gpu": False})
    gpu_job, cpu_job = store.read_all()
    assert (gpu_job.label, gpu_job.gpus, gpu_job.gpu_set) == ("night run", ALL_GPUS, ALL_GPUS)
    assert cpu_job.gpu_set == frozenset()  # a CPU job takes no GPU, whatever the file says
    assert json.loads(gpu_job.to_json())["gpus"] == "all"


def test_the_gpus_of_a_job_round_trip_and_bad_values_are_refused(tmp_path):
    store = JobStore(tmp_path)
    job = Job(id="20250101-000000-preview-abc123", kind="preview", argv=["x"], needs_gpu=True, gpus=[0, 2])
    store.job_dir(job.id).mkdir(parents=True)
    store.write(job)
    assert json.loads((store.job_dir(job.id) / JOB_FILE).read_text())["gpus"] == [0, 2]
    assert store.read(job.id).gpu_set == {0, 2}
    for bad in ("cuda:1", [-1], [True], [0.5], {"0": 1}):
        with pytest.raises(JobError, match=r"job.json: gpus must be \"all\" or a list of GPU indices"):
            Job.from_dict({**OLD_JOB, "gpus": bad}, "job.json")
