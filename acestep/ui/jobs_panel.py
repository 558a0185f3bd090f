"""The jobs as every tab shows them: submit a CLI command as a job, its status and progress,
its log tail, stop; and the panel (table, log, stop button, refresh timer) a tab embeds.

The functions take the `AppContext` and plain values, so tests call them without a browser;
`build_jobs_panel` only wires them to Gradio components.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import gradio as gr

from acestep.commands.common import EXIT_PARTIAL
from acestep.errors import AceStepError
from acestep.jobs import ACTIVE, DONE, QUEUED, Job, cli_argv, gpus_text, waits_for
from acestep.ui.context import AppContext
from acestep.ui.ticks import POLL_SECONDS, Ticks

JOB_HEADERS = ["Job", "Kind", "What", "Status", "Progress", "Who", "Started", "Message"]
MAX_SUMMARY_LINES = 40
_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
_JOB_LOG_LINE = re.compile(r"^\[job\] ")
_MARKDOWN_SPECIAL = re.compile(r"[\\`*_\[\]<>|~]")  # what formats text inside a line


def submit_cli_job(ctx: AppContext, kind: str, args: Sequence[object], needs_gpu: bool, label: str = "",
                   owner: str = "", events_path: Path | None = None, gpus: Iterable[int] | str | None = None) -> Job:
    """Queue `acestep-trainer <args>` as a job (started at once unless a GPU job must wait for one of
    its `gpus`: CUDA indices from `acestep.jobs.job_gpus` / `training_gpus`; default all GPUs)."""
    argv = cli_argv(*args)
    return ctx.jobs.submit(kind, argv, needs_gpu=needs_gpu, events_path=events_path, label=label, owner=owner,
                           cwd=ctx.workspace.root, gpus=gpus)


def latest_progress(ctx: AppContext, job: Job) -> dict | None:
    """The job's last `progress` (or train `log`) event, or None."""
    try:
        events, _ = ctx.jobs.read_events(job.id)
    except AceStepError:
        return None
    for event in reversed(events):
        if event.get("type") in ("progress", "log"):
            return event
    return None


def progress_text(event: dict | None) -> str:
    """'3/10' for a progress event, 'step 40' for a train log event, '' without one."""
    if not event:
        return ""
    if event.get("type") == "progress":
        return f"{event.get('index', '?')}/{event.get('total', '?')}"
    return f"step {event.get('step', '?')}"


def job_rows(ctx: AppContext, kinds: Iterable[str] | None = None) -> list[list[str]]:
    """One row per job (newest first), optionally only of `kinds`, after reconciling dead jobs."""
    wanted = set(kinds) if kinds is not None else None
    every_job = ctx.jobs.poll()
    jobs = [job for job in every_job if wanted is None or job.kind in wanted]
    rows = []
    for job in reversed(jobs):
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(job.started)) if job.started else ""
        progress = progress_text(latest_progress(ctx, job)) if job.status in (*ACTIVE, "done") else ""
        rows.append([job.id, job.kind, job.label, status_text(job, every_job), progress, job.owner, started,
                     job.message])
    return rows


def status_text(job: Job, jobs: Sequence[Job]) -> str:
    """A job's status with the GPUs it takes ('running (GPU 1)'; a CPU job's status alone) and, for
    a queued job, what it waits for ('queued (GPU 0), waits for GPU 0: train my-run')."""
    text = job.status
    if job.gpu_set:
        text += f" ({gpus_text(job.gpu_set)})"
    waiting = waiting_text(job, jobs)
    return f"{text}, {waiting}" if waiting else text


def waiting_text(job: Job, jobs: Sequence[Job]) -> str:
    """'waits for GPU 0: train my-run' (one part per job in its way, among `jobs`), or '' when
    the queued job waits for nothing (it starts at the next poll) or is not queued."""
    parts = []
    for other, shared in waits_for(job, jobs):
        ahead = "" if other.active else " (queued before it)"
        parts.append(f"{gpus_text(shared)}: {other.kind} {other.label or other.id}{ahead}")
    return "waits for " + "; ".join(parts) if parts else ""


def active_job(ctx: AppContext, kind: str) -> Job | None:
    """The newest queued or running job of `kind`, or None (a tab disables its start button then)."""
    for job in reversed(ctx.jobs.poll()):
        if job.kind == kind and not job.finished:
            return job
    return None


def any_active(ctx: AppContext, kinds: Iterable[str]) -> bool:
    """Whether a job of one of `kinds` is queued or running (a tab's timer keeps its quick pace then)."""
    kinds = set(kinds)
    return any(job.kind in kinds and not job.finished for job in ctx.jobs.poll())


def stop_job(ctx: AppContext, job_id: str) -> str:
    """Ask a job to stop (a queued one is cancelled); the message to show."""
    if not job_id:
        raise gr.Error("Pick a job in the table first.")
    job = ctx.jobs.stop(job_id)
    return f"Job {job.id}: {job.status}."


def job_details(ctx: AppContext, job_id: str, lines: int = 40) -> str:
    """Status line and log tail of one job, as Markdown."""
    if not job_id:
        return ""
    job = ctx.jobs.get(job_id)
    head = f"**{job.id}** ({job.kind}) **{job.status}**"
    if job.message:
        head += f": {job.message}"
    log = ctx.jobs.tail_log(job_id, lines)
    return f"{head}\n\n```\n{log or '(no output yet)'}\n```"


def friendly(function: Callable) -> Callable:
    """Wrap a UI handler so that our errors become a message in the page (never a traceback).
    The wrapper keeps the handler's signature, so Gradio still passes gr.Request, gr.Progress
    and gr.SelectData to the parameters annotated with them. Gradio marks the handler's outputs
    as failed: for an event whose outputs must stay usable (a table), use `warn_refusals`."""
    @functools.wraps(function)
    def handler(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except AceStepError as error:
            raise gr.Error(str(error)) from error
    return handler


def warn_refusals(function: Callable) -> Callable:
    """Wrap a UI handler so that a refusal (AceStepError: no sample picked, a file that
    exists, a path outside the roots) is a warning toast and leaves every output as it was. A
    gr.Error would mark the outputs as failed: Gradio lays its error box over them, which blanks
    the table and takes its clicks until another event rewrites it. Other exceptions (bugs)
    propagate and are shown as errors. The wrapper keeps the signature, so Gradio still passes
    gr.Progress and gr.SelectData."""
    @functools.wraps(function)
    def handler(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except AceStepError as error:
            gr.Warning(str(error))
            return gr.skip()  # one skip() leaves all the outputs
    return handler


def check_device(text: str | None) -> str | None:
    """The device a form names, or None for "auto" (the command picks the best one).
    Raises AceStepError for anything but cpu, mps, cuda or cuda:N."""
    device = (text or "").strip().lower()
    if device in ("", "auto"):
        return None
    if not _DEVICE.match(device):
        raise AceStepError(f"Device {text!r} is not one the trainer knows: choose auto, cuda, cuda:1, mps or cpu.")
    return device


def cancel_job(ctx: AppContext, kind: str) -> str:
    """Stop the queued or running job of `kind` (the command finishes its current file and exits);
    the message to show. Raises AceStepError when none runs."""
    job = active_job(ctx, kind)
    if job is None:
        raise AceStepError(f"No {kind} job is running.")
    job = ctx.jobs.stop(job.id)
    return f"Job {job.id}: {job.status}."


def newest_job(ctx: AppContext, kind: str) -> Job | None:
    """The most recently submitted job of `kind` (whatever its status), or None."""
    jobs = [job for job in ctx.jobs.poll() if job.kind == kind]
    return jobs[-1] if jobs else None


def job_out_folder(job: Job) -> Path | None:
    """The `--out` folder of a job's command (preprocess, export, merge, preview), absolute; or None."""
    if "--out" not in job.argv[:-1]:
        return None
    out = Path(job.argv[job.argv.index("--out") + 1])
    return out if out.is_absolute() else Path(job.cwd) / out


def markdown_text(text: str) -> str:
    """`text` shown as written in Markdown: the characters that would format it are escaped (file
    names with `*` or `_`, Windows paths with backslashes)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\g<0>", text)


def summary_from_log(log: str, first_line: re.Pattern) -> list[str]:
    """The command's closing summary: the log's lines from the last one matching `first_line`
    to the end (the supervisor's own `[job]` notes left out), at most MAX_SUMMARY_LINES."""
    lines = log.splitlines()
    starts = [i for i, line in enumerate(lines) if first_line.match(line)]
    if not starts:
        return []
    summary = [line for line in lines[starts[-1]:] if line.strip() and not _JOB_LOG_LINE.match(line)]
    if len(summary) > MAX_SUMMARY_LINES:
        summary = summary[:MAX_SUMMARY_LINES] + [f"... ({len(summary) - MAX_SUMMARY_LINES} more lines in the log)"]
    return summary


def job_heading(job: Job, jobs: Sequence[Job] = ()) -> str:
    """'Job **caption-3** (ann): **running**', with the GPUs a queued job waits for (and, given
    every job as `jobs`, the jobs in its way) and whether a finished batch left files out."""
    who = f" ({job.owner})" if job.owner else ""
    head = f"Job **{job.id}**{who}: **{job.status}**"
    if job.status == QUEUED and job.gpu_set:
        waiting = waiting_text(job, jobs)
        head += ", " + markdown_text(waiting) if waiting else f", waiting for {gpus_text(job.gpu_set)}"
    elif job.status == DONE and job.exit_code == EXIT_PARTIAL:
        head += ", but some files failed"
    return head


def job_state(ctx: AppContext, job: Job | None) -> str:
    """What the tab last showed of a job ('id:status:progress'): a change refreshes the results."""
    if job is None:
        return ""
    event = latest_progress(ctx, job) or {}
    return f"{job.id}:{job.status}:{event.get('index', '')}"


def buttons(ctx: AppContext, kind: str) -> tuple[dict, dict]:
    """Start enabled and Cancel disabled, or the other way round while a job of `kind` runs."""
    running = active_job(ctx, kind) is not None
    return gr.update(interactive=not running), gr.update(interactive=running)


def build_jobs_panel(ctx: AppContext, kinds: Sequence[str], elem_prefix: str, ticks: Ticks | None = None) -> dict:
    """A table of the jobs of `kinds`, the selected job's log, a Stop button, refreshed by a timer of
    its own (every POLL_SECONDS while one of those jobs runs or waits, else every IDLE_POLL_SECONDS),
    or as a part of the tab's `ticks` (which the tab wires). Returns the components by name (table,
    selected, details, stop) and the ticks."""
    table = gr.Dataframe(headers=JOB_HEADERS, value=lambda: job_rows(ctx, kinds), interactive=False,
                         elem_id=f"{elem_prefix}-jobs")
    selected = gr.Textbox(label="Selected job", interactive=False, elem_id=f"{elem_prefix}-job-id")
    details = gr.Markdown(elem_id=f"{elem_prefix}-job-details")
    stop = gr.Button("Stop job", variant="stop", elem_id=f"{elem_prefix}-stop")
    own_ticks = ticks is None
    if own_ticks:
        ticks = Ticks(gr.Timer(POLL_SECONDS), busy=lambda: any_active(ctx, kinds))

    def select(evt: gr.SelectData, rows):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        values = rows.values.tolist() if hasattr(rows, "values") else rows
        return values[row][0] if 0 <= row < len(values) else ""

    table.select(select, inputs=[table], outputs=[selected])
    selected.change(friendly(lambda job_id: job_details(ctx, job_id)), inputs=[selected], outputs=[details])
    stop.click(friendly(lambda job_id: gr.Info(stop_job(ctx, job_id))), inputs=[selected])
    ticks.add(friendly(lambda job_id: (job_rows(ctx, kinds), job_details(ctx, job_id))), [selected], [table, details])
    if own_ticks:
        ticks.wire()
    return {"table": table, "selected": selected, "details": details, "stop": stop, "ticks": ticks}


def owner_of(request: gr.Request | None) -> str:
    """The logged-in user's name ('' without login)."""
    return getattr(request, "username", None) or ""
