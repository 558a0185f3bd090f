"""The Caption tab's "Split long songs" panel: cut the long songs of a folder into 30 s or 60 s
segments with the `split` command, as a job, and follow it file by file; each segment keeps its
song's labels (not the lyrics).

    form = SplitForm(folder="audio/my-songs")     # out empty: "audio/my-songs-split"
    split_args(ctx, form)                         # ["split", ".../my-songs", ".../my-songs-split", ...]
    job = start_split(ctx, form, owner="ann")     # `acestep-trainer split ...` as a CPU job
    split_markdown(ctx, newest_job(ctx, SPLIT))   # "**3/10** song.wav", then the command's summary

The audio folder both this panel and the Caption tab's form take (`default_folder`, `audio_folder`)
is resolved here, so the tab imports the panel and not the other way round. `build_split_panel`
only wires the functions to Gradio, inside the tab, on the tab's shared timer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from acestep.audio.split import SEGMENT_CHOICES
from acestep.errors import AceStepError
from acestep.jobs import Job
from acestep.ui.context import AppContext, PathRefused
from acestep.ui.jobs_panel import (
    active_job,
    buttons,
    cancel_job,
    friendly,
    job_heading,
    latest_progress,
    markdown_text,
    newest_job,
    owner_of,
    submit_cli_job,
    summary_from_log,
)
from acestep.ui.ticks import Ticks

SPLIT = "split"  # the job kind of the Split long songs panel
SPLIT_SUMMARY_START = re.compile(r"^Split \d+ of \d+ file\(s\) into ")  # the split command's summary


@dataclass
class SplitForm:
    """What the Split long songs panel says (the options of `acestep-trainer split`)."""

    folder: str = ""
    out: str = ""  # empty: "<folder>-split" beside the folder
    segment: int = 30
    min_tail: float = 10.0


def default_folder(ctx: AppContext) -> str:
    """The audio folder the form starts with: the demo's, else the workspace's audio/."""
    folder = ctx.defaults.get("audio") or ctx.workspace.audio
    return ctx.workspace.relative(Path(folder))


def audio_folder(ctx: AppContext, text: str) -> Path:
    """The audio folder typed in the form, resolved. Raises PathRefused (outside the workspace,
    missing) or AceStepError (a file, not a folder)."""
    folder = ctx.workspace.check_path(text, must_exist=True, what="audio folder")
    if not folder.is_dir():
        raise AceStepError(f"{folder} is a file; choose the folder that holds the songs.")
    return folder


def default_split_out(ctx: AppContext, folder: Path) -> Path:
    """Where the segments of `folder` go when the form leaves it empty: `<folder>-split` beside it,
    or in the workspace's audio/ when that sibling lies outside the folders the app may use."""
    try:
        return ctx.workspace.check_path(folder.with_name(f"{folder.name}-split"), what="output folder")
    except PathRefused:
        return ctx.workspace.audio / f"{folder.name}-split"


def split_args(ctx: AppContext, form: SplitForm) -> list[str]:
    """The `split` command line the panel asks for. Raises PathRefused / AceStepError naming the
    field that is wrong."""
    folder = audio_folder(ctx, form.folder)
    out = ctx.workspace.check_path(form.out, what="output folder") if form.out.strip() else \
        default_split_out(ctx, folder)
    if out == folder:
        raise AceStepError("The output folder is the audio folder; choose another, so the originals stay untouched.")
    if out.exists() and not out.is_dir():
        raise AceStepError(f"The output folder {out} is a file; choose a folder.")
    if form.segment not in SEGMENT_CHOICES:
        raise AceStepError(f"Segment length {form.segment!r} is not offered; choose one of "
                           f"{', '.join(map(str, SEGMENT_CHOICES))} s.")
    try:
        min_tail = float(form.min_tail)
    except (TypeError, ValueError):
        raise AceStepError(f"Shortest last segment must be a number of seconds, got {form.min_tail!r}.") from None
    if not 0 <= min_tail <= form.segment:
        raise AceStepError(f"Shortest last segment must be from 0 to {form.segment} s (the segment length), "
                           f"got {form.min_tail!r}.")
    return ["split", str(folder), str(out), "--segment", str(form.segment), "--min-tail", f"{min_tail:g}"]


def start_split(ctx: AppContext, form: SplitForm, owner: str = "") -> Job:
    """Submit the split job (a CPU job, started at once). Raises AceStepError while another split
    job is queued or running."""
    running = active_job(ctx, SPLIT)
    if running is not None:
        raise AceStepError(f"Split job {running.id} is {running.status}; wait for it to end or cancel it.")
    args = split_args(ctx, form)
    label = f"{ctx.workspace.relative(Path(args[1]))} -> {ctx.workspace.relative(Path(args[2]))}"
    return submit_cli_job(ctx, SPLIT, args, needs_gpu=False, owner=owner, label=label)


def split_markdown(ctx: AppContext, job: Job | None) -> str:
    """The panel's progress: the job's status, the file now cut ("3/10 song.wav"), and once it has
    ended the command's summary (files split, segments written, labels copied, failures)."""
    if job is None:
        return "No split has run yet."
    lines = [job_heading(job, ctx.jobs.list_jobs())]
    event = latest_progress(ctx, job)
    if event and event.get("type") == "progress":
        name = Path(str(event.get("message", ""))).name
        lines.append(f"**{event.get('index', '?')}/{event.get('total', '?')}** {markdown_text(name)}")
    elif job.active:
        lines.append("Looking for audio files...")
    if job.finished:
        summary = summary_from_log(ctx.jobs.tail_log(job.id, 400), SPLIT_SUMMARY_START)
        if summary:
            head, *details = summary
            lines.append(markdown_text(head))
            if details:
                lines.append("\n".join(f"- {markdown_text(line.strip())}" for line in details))
        elif job.message:
            lines.append(markdown_text(job.message))
    return "\n\n".join(lines)


def build_split_panel(ctx: AppContext, ticks: Ticks) -> None:
    """Add the Split long songs accordion to the current Blocks context: its form, Start/Cancel and
    progress, refreshed by `ticks`, the Caption tab's timer (the tab wires it; Split quickens it)."""
    with gr.Accordion("Split long songs into 30 s or 60 s segments", open=False, elem_id="split-panel"):
        gr.Markdown("Cuts every audio file of a folder (sub-folders too) into WAV segments in another folder; "
                    "the originals are not touched. Each segment gets its song's labels from the sidecars "
                    "(caption, genre, BPM, key, time signature, language, instrumental) but not the lyrics, "
                    "as a segment holds only part of the song. Then label or build from the new folder.")
        with gr.Row():
            folder = gr.Textbox(label="Folder of long songs", value=default_folder(ctx), scale=2,
                                elem_id="split-folder")
            out = gr.Textbox(label="Segments folder", placeholder="empty: <folder>-split beside the folder",
                             scale=2, elem_id="split-out", info="inside the workspace or a --data-root folder")
            segment = gr.Radio(list(SEGMENT_CHOICES), value=30, label="Segment length (s)", elem_id="split-segment")
            min_tail = gr.Number(10, label="Shortest last segment (s)", minimum=0, elem_id="split-min-tail",
                                 info="a shorter end of a song is dropped")
        with gr.Row():
            start = gr.Button("Split", variant="primary", elem_id="split-start")
            cancel = gr.Button("Cancel", variant="stop", interactive=False, elem_id="split-cancel")
        progress = gr.Markdown(lambda: split_markdown(ctx, newest_job(ctx, SPLIT)), elem_id="split-progress")

    def on_start(folder_text, out_text, seconds, tail, request: gr.Request):
        form = SplitForm(folder_text or "", out_text or "", int(seconds or 0), tail)
        job = friendly(start_split)(ctx, form, owner_of(request))
        return (split_markdown(ctx, job), *buttons(ctx, SPLIT), *ticks.hurry())

    def on_cancel():
        gr.Info(friendly(cancel_job)(ctx, SPLIT))
        return buttons(ctx, SPLIT)

    start.click(on_start, inputs=[folder, out, segment, min_tail],
                outputs=[progress, start, cancel, *ticks.pace_outputs])
    cancel.click(on_cancel, outputs=[start, cancel])
    ticks.add(lambda: (split_markdown(ctx, newest_job(ctx, SPLIT)), *buttons(ctx, SPLIT)), [],
              [progress, start, cancel])

