"""The Caption tab: label a folder of songs with the `caption` command as a job, follow it file by
file, and see the labels each file's sidecar holds. Its "Split long songs" panel, which first cuts
long songs into 30 s or 60 s segments, is `acestep.ui.split_panel`.

    form = CaptionForm(folder="audio/my-songs", labeller="analysis")
    job = start_caption(ctx, form, owner="ann")          # `acestep-trainer caption ...` as a job
    progress_markdown(ctx, newest_job(ctx, CAPTION))    # "**3/10** song.wav · analysis labelled"
    result_rows(ctx, form.folder)                        # one row per audio file: its labels

The functions take the `AppContext` and plain values, so tests call them without a browser;
`build_caption_tab` only wires them to Gradio. No model code is imported: the job runs the CLI.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from acestep.errors import AceStepError, DatasetError
from acestep.jobs import Job, job_gpus
from acestep.ui.context import AppContext
from acestep.ui.jobs_panel import (
    active_job,
    any_active,
    build_jobs_panel,
    buttons,
    cancel_job,
    check_device,
    friendly,
    job_heading,
    job_state,
    latest_progress,
    markdown_text,
    newest_job,
    owner_of,
    submit_cli_job,
    summary_from_log,
)
from acestep.ui.split_panel import SPLIT, audio_folder, build_split_panel, default_folder
from acestep.ui.ticks import POLL_SECONDS, Ticks

CAPTION = "caption"  # the job kind
LABELLERS = {
    "captioner": "AI captioner (Qwen2.5-Omni 7B, GPU): style caption, genre, key, tempo",
    "lm": "5 Hz LM (GPU): caption, genres, BPM, key, lyrics from the DiT's audio codes",
    "analysis": "Signal analysis only: BPM and key, no model",
}
MODES = ("fill-missing", "overwrite")
DEVICES = ("auto", "cuda", "cpu", "mps")
LM_MODELS = ("acestep-5Hz-lm-0.6B", "acestep-5Hz-lm-1.7B", "acestep-5Hz-lm-4B")
CSV_NAME = "labels.csv"
RESULT_HEADERS = ["File", "Caption", "Genre", "BPM", "Key", "Time sig.", "Language", "Lyrics", "Instrumental",
                  "Labelled by", "Notes"]
SUMMARY_START = re.compile(r"^\d+ file\(s\): ")  # the first line of the caption command's summary
NOT_LABELLED = "no sidecar yet (not labelled, or its labelling failed: see the summary above)"
_LABEL_STEP = re.compile(r"^(?P<labeller>\S+)\s+(?P<status>\S+)\s+(?P<rest>.*?)\s+ETA\s+(?P<eta>\S+)$")


@dataclass
class CaptionForm:
    """What the Caption tab's form says (the options of `acestep-trainer caption`)."""

    folder: str = ""
    labeller: str = "captioner"
    transcribe: bool = False
    analysis: bool = True  # signal analysis after the model (always on for the analysis labeller)
    mode: str = "fill-missing"
    max_seconds: float = 240.0
    device: str = "auto"
    lm: str = "acestep-5Hz-lm-1.7B"
    write_csv: bool = False  # also write <folder>/labels.csv (which `build` reads)
    use_cache: bool = True


@dataclass
class LabelStep:
    """One `[i/n]` line of the caption command, read back from the job's progress event."""

    index: int
    total: int
    labeller: str
    status: str  # labelled, cached, skipped, failed
    file: str  # the file's name
    detail: str  # why it failed, or a note
    eta: str


def uses_model(form: CaptionForm) -> bool:
    """Whether the job loads a model (the captioner, the LM or the transcriber)."""
    return form.labeller != "analysis" or form.transcribe


def caption_args(ctx: AppContext, form: CaptionForm) -> list[str]:
    """The `caption` command line the form asks for (without the Python and module in front).
    Raises PathRefused / AceStepError naming the field that is wrong."""
    folder = audio_folder(ctx, form.folder)
    if form.labeller not in LABELLERS:
        raise AceStepError(f"Labeller {form.labeller!r} is unknown; choose one of {', '.join(LABELLERS)}.")
    if form.mode not in MODES:
        raise AceStepError(f"Mode {form.mode!r} is unknown; choose one of {', '.join(MODES)}.")
    try:
        max_seconds = float(form.max_seconds)
    except (TypeError, ValueError):
        raise AceStepError(f"Seconds per song must be a number, got {form.max_seconds!r}.") from None
    if not math.isfinite(max_seconds) or max_seconds <= 0:
        raise AceStepError(f"Seconds per song must be more than 0, got {form.max_seconds!r}.")
    device = check_device(form.device)
    args = ["caption", str(folder), "--labeller", form.labeller, "--mode", form.mode,
            "--max-seconds", f"{max_seconds:g}", "--checkpoints-dir", str(ctx.workspace.checkpoints)]
    if form.transcribe:
        args.append("--transcribe")
    if not form.analysis and form.labeller != "analysis":
        args.append("--no-analysis")
    if form.labeller == "lm":
        if not form.lm.strip():
            raise AceStepError("Choose the 5 Hz LM the lm labeller runs.")
        args += ["--lm", form.lm.strip()]
    if device:
        args += ["--device", device]
    if form.write_csv:
        args += ["--csv", str(folder / CSV_NAME)]
    if not form.use_cache:
        args.append("--no-cache")
    return args


def start_caption(ctx: AppContext, form: CaptionForm, owner: str = "") -> Job:
    """Submit the caption job: a GPU job when a model runs on the GPU, else a CPU job (started at
    once). Raises AceStepError while another caption job is queued or running."""
    running = active_job(ctx, CAPTION)
    if running is not None:
        raise AceStepError(f"Caption job {running.id} is {running.status}; wait for it to end or cancel it.")
    args = caption_args(ctx, form)
    gpus = job_gpus(form.device) if uses_model(form) else frozenset()  # "auto": cuda (GPU 0) when there is one
    return submit_cli_job(ctx, CAPTION, args, needs_gpu=bool(gpus), gpus=gpus, owner=owner,
                          label=ctx.workspace.relative(Path(args[1])))


def parse_label_step(event: dict | None) -> LabelStep | None:
    """The file, labeller and status of a caption job's progress event (None for another event)."""
    if not event or event.get("type") != "progress":
        return None
    match = _LABEL_STEP.match(str(event.get("message", "")))
    if not match:
        return None
    path, _, detail = match["rest"].partition("  ")
    return LabelStep(int(event.get("index", 0)), int(event.get("total", 0)), match["labeller"], match["status"],
                     Path(path.strip()).name, detail.strip(), match["eta"])


def progress_markdown(ctx: AppContext, job: Job | None) -> str:
    """The tab's progress line: the job's status, the file now labelled ("3/10 song.wav"), and
    the command's summary once it has ended."""
    if job is None:
        return "No caption job has run yet."
    lines = [job_heading(job, ctx.jobs.list_jobs())]
    step = parse_label_step(latest_progress(ctx, job))
    if step is not None:
        line = f"**{step.index}/{step.total}** {step.file} · {step.labeller} {step.status}"
        if step.detail:
            line += f": {step.detail}"
        if not job.finished:
            line += f" · ETA {step.eta}"
        lines.append(line)
    elif job.active:
        lines.append("Loading...")
    if job.finished:
        summary = summary_from_log(ctx.jobs.tail_log(job.id, 400), SUMMARY_START)
        if summary:  # the counts, then one wrapped item per failed file: its reason names the fix
            head, *details = summary
            lines.append(markdown_text(head))
            if details:
                lines.append("\n".join(f"- {markdown_text(line.strip())}" for line in details))
        elif job.message:
            lines.append(job.message)
    return "\n\n".join(lines)


def _cell(value, limit: int = 160) -> str:
    text = " / ".join(line.strip() for line in str(value).splitlines() if line.strip())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _sidecar_extras(path: Path | None) -> tuple[str, list[str]]:
    """Who labelled the file and the notes the labellers left, from its `.json` sidecar."""
    if path is None:
        return "", []
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return "", []  # read_sidecars reports it
    if not isinstance(data, dict):
        return "", []
    notes = [str(note) for note in data.get("label_notes", [])]
    if data.get("unparsed"):
        notes.append("raw output kept, could not be parsed: " + ", ".join(map(str, data["unparsed"])))
    return ", ".join(data.get("labelled_by", {}) or {}), notes


def label_row(audio: Path, folder: Path, stems: Counter) -> list[str]:
    """One results row: the labels an audio file's sidecars hold, or why they cannot be read."""
    from acestep.dataset.sidecars import read_sidecars, sidecar_paths

    name = audio.relative_to(folder).as_posix()
    sidecars = sidecar_paths(audio, stems)
    if not sidecars:
        return [name, "", "", "", "", "", "", "", "", "", NOT_LABELLED]
    try:
        labels = read_sidecars(audio, stems)
    except DatasetError as error:
        return [name, "", "", "", "", "", "", "", "", "", str(error)]
    labelled_by, notes = _sidecar_extras(sidecars.get(".json"))
    bpm = labels.get("bpm")
    instrumental = labels.get("instrumental")
    return [name, _cell(labels.get("caption", "")), _cell(labels.get("genre", "")),
            f"{bpm:g}" if isinstance(bpm, (int, float)) else "", labels.get("keyscale", ""),
            labels.get("timesignature", ""), labels.get("language", ""), _cell(labels.get("lyrics", ""), 80),
            "" if instrumental is None else ("yes" if instrumental else "no"), labelled_by, _cell("; ".join(notes))]


def result_rows(ctx: AppContext, folder_text: str) -> list[list[str]]:
    """One row per audio file in the folder (recursively) with the labels its sidecars hold.
    Raises PathRefused / DatasetError for a folder outside the workspace or missing."""
    from acestep.dataset.build import scan_audio_files
    from acestep.dataset.sidecars import audio_stems

    folder = audio_folder(ctx, folder_text)
    stems: dict[Path, Counter] = {}
    rows = []
    for audio in scan_audio_files(folder):
        if audio.parent not in stems:
            stems[audio.parent] = audio_stems(audio.parent)
        rows.append(label_row(audio, folder, stems[audio.parent]))
    return rows


def build_caption_tab(ctx: AppContext) -> None:
    """Add the Caption tab's components to the current Blocks context."""
    gr.Markdown("Label the songs of a folder: captions, lyrics, BPM and key go into a `.json` sidecar beside "
                "each file, which **Build** reads. The models run one after the other; signal analysis checks "
                "the tempo and key they give.")
    ticks = Ticks(gr.Timer(POLL_SECONDS), busy=lambda: any_active(ctx, (CAPTION, SPLIT)))
    build_split_panel(ctx, ticks)
    with gr.Row():
        folder = gr.Textbox(label="Audio folder", value=default_folder(ctx), scale=2, elem_id="caption-folder",
                            info="inside the workspace (relative paths start there) or a --data-root folder; "
                                 "sub-folders are searched")
        labeller = gr.Radio([(text, name) for name, text in LABELLERS.items()], value="captioner", label="Labeller",
                            scale=3, elem_id="caption-labeller")
    with gr.Row():
        transcribe = gr.Checkbox(label="Transcribe lyrics (transcriber model)", elem_id="caption-transcribe")
        analysis = gr.Checkbox(value=True, label="Signal analysis (BPM, key)", elem_id="caption-analysis")
        write_csv = gr.Checkbox(label=f"Also write {CSV_NAME} in the folder", elem_id="caption-csv")
        use_cache = gr.Checkbox(value=True, label="Use the results cache", elem_id="caption-cache")
    with gr.Row():
        mode = gr.Radio(list(MODES), value="fill-missing", label="Files already labelled", elem_id="caption-mode")
        max_seconds = gr.Number(240, label="Seconds of each song the models hear", minimum=1,
                                elem_id="caption-max-seconds")
        device = gr.Dropdown(list(DEVICES), value="auto", label="Device", allow_custom_value=True,
                             elem_id="caption-device")
        lm = gr.Dropdown(list(LM_MODELS), value=CaptionForm.lm, label="5 Hz LM (lm labeller)",
                         allow_custom_value=True, elem_id="caption-lm")
    with gr.Row():
        start = gr.Button("Start labelling", variant="primary", elem_id="caption-start")
        cancel = gr.Button("Cancel", variant="stop", interactive=False, elem_id="caption-cancel")
    progress = gr.Markdown(lambda: progress_markdown(ctx, newest_job(ctx, CAPTION)), elem_id="caption-progress")
    with gr.Row():
        gr.Markdown("### Labels in the sidecars")
        refresh = gr.Button("Refresh labels", size="sm", elem_id="caption-refresh")
    results = gr.Dataframe(headers=RESULT_HEADERS, value=lambda: _quiet_rows(ctx, default_folder(ctx)),
                           interactive=False, wrap=True, elem_id="caption-results")
    shown = gr.State("")
    with gr.Accordion("Caption and split jobs and their logs", open=False):
        build_jobs_panel(ctx, [CAPTION, SPLIT], "caption")

    form_inputs = [folder, labeller, transcribe, analysis, mode, max_seconds, device, lm, write_csv, use_cache]

    def on_start(folder_text, labeller_name, transcribe_on, analysis_on, mode_name, seconds, device_name, lm_name,
                 csv_on, cache_on, request: gr.Request):
        form = CaptionForm(folder_text or "", labeller_name, bool(transcribe_on), bool(analysis_on), mode_name, seconds,
                           device_name, lm_name or "", bool(csv_on), bool(cache_on))
        job = friendly(start_caption)(ctx, form, owner_of(request))
        return (progress_markdown(ctx, job), *buttons(ctx, CAPTION), *ticks.hurry())

    def on_tick(folder_text, last):
        job = newest_job(ctx, CAPTION)
        state = job_state(ctx, job)
        rows = _quiet_rows(ctx, folder_text) if state != last else gr.update()
        return (progress_markdown(ctx, job), *buttons(ctx, CAPTION), rows, state)

    def on_cancel():
        gr.Info(friendly(cancel_job)(ctx, CAPTION))
        return buttons(ctx, CAPTION)

    start.click(on_start, inputs=form_inputs, outputs=[progress, start, cancel, *ticks.pace_outputs])
    cancel.click(on_cancel, outputs=[start, cancel])
    refresh.click(friendly(lambda text: result_rows(ctx, text)), inputs=[folder], outputs=[results])
    folder.submit(friendly(lambda text: result_rows(ctx, text)), inputs=[folder], outputs=[results])
    ticks.add(on_tick, [folder, shown], [progress, start, cancel, results, shown])
    ticks.wire()


def _quiet_rows(ctx: AppContext, folder_text: str) -> list[list[str]]:
    """result_rows for the timer and page load: no rows (and no error popup) for a bad folder."""
    try:
        return result_rows(ctx, folder_text)
    except AceStepError:
        return []
