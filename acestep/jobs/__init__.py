"""Long jobs (caption, preprocess, train, export, merge, preview, download, split) as child
processes running the CLI, with their state on disk so every browser, and the app after a
restart, sees the same jobs.

    manager = JobManager(project / "runs" / ".jobs")
    job = manager.submit("train", cli_argv("train", "--config", toml, "--set", f"run.name={name}"),
                         needs_gpu=True, gpus=training_gpus(config.run.devices),
                         events_path=run_dir / "events.jsonl", label=name, owner=user)
    manager.poll()                                   # every browser's timer; also after a restart
    events, offset = manager.read_events(job.id, since=offset)
    manager.stop(job.id)                             # SIGINT (+ STOP file), killed after the timeout

Each job runs under a small supervisor process (`acestep.jobs.runner`) that waits for the
command, copies its output to the job's log.txt, carries out stops and records the final status.
Both live in their own session, apart from the app: closing the browser does nothing to a job,
and neither does quitting or crashing the app. A job keeps running, its result is recorded when
it ends, and the queued GPU jobs it held back are started by that supervisor, app or not; the app finds
them all when it starts again. To end jobs with the app, stop them first.

Statuses: queued → running → (stopping →) done | failed | stopped | crashed; a queued job that
is stopped is cancelled. done: exit 0, or 2 (finished with some files failed; said in the
message). stopped: exit 0 or 130 after a stop, SIGINT, or killed after the stop timeout. failed:
another exit status (the message is the command's `error:` line). crashed: killed by a signal
nobody asked for (SIGKILL, SIGSEGV, the OOM killer), or its processes vanished without a result.

GPU jobs queue per GPU (`acestep.jobs.queue`): a job takes the GPUs `job_gpus` or `training_gpus`
say, or all of them, and waits while a job running or queued before it shares one.
"""

from acestep.jobs.gpus import ALL_GPUS, gpus_text, job_gpus, training_gpus
from acestep.jobs.manager import DEFAULT_STOP_TIMEOUT, TRAIN_KIND, JobManager, cli_argv
from acestep.jobs.queue import waits_for
from acestep.jobs.store import (
    ACTIVE,
    CANCELLED,
    CRASHED,
    DONE,
    FAILED,
    FINISHED,
    QUEUED,
    RUNNING,
    STATUSES,
    STOPPED,
    STOPPING,
    Job,
    JobError,
)

__all__ = [
    "ACTIVE", "ALL_GPUS", "CANCELLED", "CRASHED", "DEFAULT_STOP_TIMEOUT", "DONE", "FAILED", "FINISHED", "QUEUED",
    "RUNNING", "STATUSES", "STOPPED", "STOPPING", "TRAIN_KIND", "Job", "JobError", "JobManager", "cli_argv",
    "gpus_text", "job_gpus", "training_gpus", "waits_for",
]
