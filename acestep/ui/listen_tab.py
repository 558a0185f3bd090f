"""The Listen tab: render a trained adapter with your own caption and lyrics at several strengths
from the same noise (strength 0 is the base model), and hear the results beside their
spectrograms, without leaving the app or loading anything into it.

Each render is an `acestep-trainer preview` job (on the GPU, queued behind other GPU jobs, unless
the device is cpu) writing into `outputs/listen/<run>-<adapter>[-N]/` with a `preview.json`
saying what was rendered; earlier renders stay listed. The functions take the `AppContext` and
plain values, so tests run them without a browser.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import gradio as gr

from acestep.errors import AceStepError
from acestep.files import new_folder
from acestep.inference import GUIDANCE_METHODS
from acestep.inference.cli import parse_strengths
from acestep.inference.effect import distance_summary, effect_summary, recorded_distances, recorded_effects
from acestep.inference.render import read_record, render_order, strength_label
from acestep.jobs import DONE, Job, job_gpus
from acestep.training.config_schema import QUANTIZATIONS
from acestep.training.run_folders import adapter_metadata, read_run_config, run_folder
from acestep.ui.adapter_picker import (
    build_adapter_picker,
    checkpoint_choices,
    default_checkpoint,
    picked_adapter,
)
from acestep.ui.context import AppContext, holds_tensors
from acestep.ui.jobs_panel import (
    any_active,
    build_jobs_panel,
    check_device,
    friendly,
    job_heading,
    job_out_folder,
    markdown_text,
    newest_job,
    owner_of,
    submit_cli_job,
)
from acestep.ui.ticks import POLL_SECONDS, Ticks

LISTEN_KIND = "preview"  # the job kind: `acestep-trainer preview`
LISTEN_FOLDER = "listen"  # under the workspace's outputs/
MAX_STRENGTHS = 4  # players on the page
MAX_SECONDS = 600.0  # acestep.inference.preview.MAX_SECONDS (that module imports torch)
DEVICES = ("auto", "cuda", "cpu", "mps")


class ListenRefused(AceStepError):
    """The form asks for a render that cannot be made (the message says why)."""


@dataclass
class ListenForm:
    run: str
    checkpoint: str  # final, best, checkpoints/step-N
    caption: str
    lyrics: str = ""
    language: str = "en"
    duration: float = 20.0
    seed: int = 0
    strengths: str = "0, 1"
    bpm: float | None = None
    key: str = ""
    time_signature: str = ""
    steps: int | None = None
    shift: float | None = None  # None: the variant's default (turbo 3, base/sft 1)
    guidance_scale: float | None = None  # None: base/sft 7; a turbo model refuses more than 1 (in the job)
    guidance: str = "apg"  # `preview --guidance`: apg (its default) or cfg
    device: str = "auto"
    quantization: str = "none"  # "nf4": the DiT's blocks in 4 bits (`preview --quantization`)


# ---- defaults and the command line ---------------------------------------------------------------

def _adapter(ctx: AppContext, run: str | None, checkpoint: str | None = None) -> Path | None:
    """The adapter folder of `checkpoint` in `run` (unset: the one the picker starts from), or None."""
    return picked_adapter(ctx, run, checkpoint or default_checkpoint(checkpoint_choices(ctx, run or "")))


class PromptDefaults(NamedTuple):
    caption: str = ""
    lyrics: str = ""
    language: str = "en"
    bpm: float | None = None
    key: str = ""
    time_signature: str = ""


def default_prompt(ctx: AppContext, run: str | None) -> PromptDefaults:
    """The prompt to start from: the run's preview settings when it has them (caption, lyrics,
    language, BPM, key, time signature), else its adapters' trigger tag; empty without a run."""
    adapter = _adapter(ctx, run)
    if adapter is None:
        return PromptDefaults()
    settings = read_run_config(run_folder(ctx.workspace.runs, run)).get("run", {})
    bpm = settings.get("preview_bpm")
    return PromptDefaults(
        caption=str(settings.get("preview_caption") or adapter_metadata(adapter).get("trigger_tag") or ""),
        lyrics=str(settings.get("preview_lyrics") or ""), language=str(settings.get("preview_language") or "en"),
        bpm=float(bpm) if isinstance(bpm, (int, float)) and not isinstance(bpm, bool) else None,
        key=str(settings.get("preview_key") or ""), time_signature=str(settings.get("preview_time_signature") or ""))


def default_quantization(ctx: AppContext, run: str | None, checkpoint: str | None = None) -> str:
    """"nf4" when the adapter picked in `run` was trained on a 4-bit base (its metadata says
    base_quantization), else "none": renders then need the same memory as the training."""
    adapter = _adapter(ctx, run, checkpoint)
    if adapter is None:
        return "none"
    return "nf4" if adapter_metadata(adapter).get("base_quantization") == "nf4" else "none"


def _number(value, what: str, whole: bool = False, low: float = 0.0, high: float = math.inf,
            low_included: bool = True) -> float | int | None:
    """A form number checked against its range; None when left empty."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ListenRefused(f"{what} must be a number, found {value!r}.") from None
    inside = (number >= low if low_included else number > low) and number <= high
    if not math.isfinite(number) or not inside or (whole and number != int(number)):
        bound = f"{'at least' if low_included else 'more than'} {low:g}" + (
            f" and at most {high:g}" if math.isfinite(high) else "")
        raise ListenRefused(f"{what} must be {'a whole number ' if whole else ''}{bound}, found {value!r}.")
    return int(number) if whole else number


def listen_output(ctx: AppContext, run: str, checkpoint: str) -> Path:
    """A new folder `outputs/listen/<run>-<adapter>`, numbered when taken: every render keeps its
    own, and two renders submitted at once never share one."""
    return new_folder(ctx.workspace.outputs / LISTEN_FOLDER / f"{run}-{Path(checkpoint).name}")


def listen_args(ctx: AppContext, form: ListenForm) -> list[str]:
    """The `preview` command line the form asks for, but its `--out` (`start_listen` makes the
    folder). Raises ListenRefused, RunFolderError or AceStepError (the device) naming what is wrong."""
    adapter = picked_adapter(ctx, form.run, form.checkpoint)
    if adapter is None:
        raise ListenRefused("Pick a run and one of its adapters first.")
    caption = (form.caption or "").strip()
    if not caption:
        raise ListenRefused("Write a caption: what the music should be, with the adapter's trigger tag.")
    try:
        strengths = parse_strengths(form.strengths or "")
    except argparse.ArgumentTypeError as error:
        raise ListenRefused(f"Strengths: {error}.") from None
    if len(strengths) > MAX_STRENGTHS or max(strengths) > 2:
        raise ListenRefused(f"Strengths: at most {MAX_STRENGTHS} of them, each from 0 to 2 (0 is the base model, "
                            f"1 the adapter as trained), found {form.strengths!r}.")
    duration = _number(form.duration, "Seconds", low=0, high=MAX_SECONDS, low_included=False)
    seed = _number(form.seed, "Seed", whole=True)
    bpm = _number(form.bpm, "BPM", low=0, low_included=False)
    steps = _number(form.steps, "Sampling steps", whole=True, low=1)
    shift = _number(form.shift, "Timestep shift", low=0, low_included=False)
    guidance_scale = _number(form.guidance_scale, "Guidance scale", low=0)
    guidance = form.guidance or "apg"
    if guidance not in GUIDANCE_METHODS:
        raise ListenRefused(f"Guidance method: one of {', '.join(GUIDANCE_METHODS)}, found {form.guidance!r}.")
    device = check_device(form.device)
    if form.quantization not in QUANTIZATIONS:
        raise ListenRefused(f"DiT weights: one of {', '.join(QUANTIZATIONS)}, found {form.quantization!r}.")
    # text goes as --flag=text: a caption or lyrics starting with "-" is not taken for an option. A guidance
    # scale on a turbo model is refused by the job: `preview`'s own check, once it knows the model's variant
    args = ["preview", "--adapter", str(adapter), f"--caption={caption}", "--strengths",
            ",".join(f"{s:g}" for s in strengths), "--duration", f"{duration if duration is not None else 20.0:g}",
            "--seed", str(seed or 0)]
    optional = (("--lyrics", (form.lyrics or "").strip()), ("--language", (form.language or "").strip()),
                ("--bpm", f"{bpm:g}" if bpm is not None else ""), ("--key", (form.key or "").strip()),
                ("--time-signature", (form.time_signature or "").strip()),
                ("--steps", str(steps) if steps is not None else ""),
                ("--shift", f"{shift:g}" if shift is not None else ""),
                ("--guidance-scale", f"{guidance_scale:g}" if guidance_scale is not None else ""),
                ("--guidance", guidance if guidance != "apg" else ""), ("--device", device or ""),
                ("--quantization", form.quantization if form.quantization != "none" else ""))
    args += [f"{flag}={value}" for flag, value in optional if value]
    songs = run_songs(ctx, form.run)
    if songs is not None:
        args.append(f"--songs={songs}")
    return args + ["--checkpoints-dir", str(ctx.workspace.checkpoints)]


def run_songs(ctx: AppContext, run: str) -> Path | None:
    """The tensors folder a run trained on (its config's data.tensors_dir), when it is still there:
    renders measure their latent distance to those songs."""
    tensors_dir = read_run_config(run_folder(ctx.workspace.runs, run)).get("data", {}).get("tensors_dir")
    if not isinstance(tensors_dir, str) or not tensors_dir:
        return None
    return Path(tensors_dir) if holds_tensors(tensors_dir) else None


def start_listen(ctx: AppContext, form: ListenForm, owner: str = "") -> Job:
    """Submit the render: a job on its GPU (it waits while another job uses that GPU) unless the device is cpu."""
    args = listen_args(ctx, form)
    args += ["--out", str(listen_output(ctx, form.run, form.checkpoint))]
    gpus = job_gpus(form.device)  # "auto" renders on cuda (GPU 0) when there is one
    return submit_cli_job(ctx, LISTEN_KIND, args, needs_gpu=bool(gpus), gpus=gpus,
                          label=f"{form.run}/{Path(form.checkpoint).name}", owner=owner)


# ---- renders on disk -----------------------------------------------------------------------------

def render_folders(ctx: AppContext) -> list[str]:
    """The folders of earlier renders (relative to the workspace), newest first."""
    root = ctx.workspace.outputs / LISTEN_FOLDER
    folders = [folder for folder in root.glob("*/") if folder.is_dir() and any(folder.glob("*.wav"))]
    folders.sort(key=lambda folder: folder.stat().st_mtime, reverse=True)
    return [ctx.workspace.relative(folder) for folder in folders]


def render_files(folder: Path) -> list[tuple[str, Path, Path | None]]:
    """(label, wav, spectrogram PNG or None) of each file of a render, by strength; a strength's
    label names its adapter effect when the folder's preview.json records one."""
    wavs = sorted(Path(folder).glob("*.wav"), key=lambda path: render_order(path.stem))
    effects = recorded_effects(read_record(folder))
    files = []
    for wav in wavs:
        strength = render_order(wav.stem)
        written = strength_label(strength)
        label = "base model" if strength <= 0 else f"strength {written}" + (" (as trained)" if strength == 1 else "")
        if strength > 0 and written in effects:
            label += f", {effects[written]:.2f} dB"  # the description says what it is
        png = wav.with_suffix(".png")
        files.append((label, wav, png if png.is_file() else None))
    return files


def render_description(ctx: AppContext, folder: Path) -> str:
    """Markdown: what the render in `folder` was made from (its preview.json), or just where it is."""
    where = f"`{markdown_text(ctx.workspace.relative(folder))}`"
    record = read_record(folder)
    if record is None:
        return f"Files in {where}."
    parts = [f"**{markdown_text(str(record.get('caption', '')))}**"]
    lyrics = str(record.get("lyrics") or "").strip()
    parts.append(f"lyrics: {markdown_text(lyrics.splitlines()[0])}..." if lyrics else "instrumental")
    scale = record.get("guidance_scale")  # 1 (turbo): sampled without guidance, not worth a word
    guided = f"{scale:g} ({record.get('guidance') or 'apg'})" if isinstance(scale, (int, float)) and scale > 1 else None
    for key, text in (("duration", "{:g} s"), ("seed", "seed {}"), ("steps", "{} steps"), ("shift", "shift {:g}"),
                      ("guided", "guidance {}"), ("bpm", "{:g} BPM"), ("key", "{}"), ("variant", "{} model"),
                      ("quantization", "{} DiT weights")):
        value = guided if key == "guided" else record.get(key)
        if value not in (None, "", "none"):
            parts.append(markdown_text(text.format(value)))
    adapter = record.get("adapter")
    if adapter:
        parts.append(f"adapter `{markdown_text(ctx.workspace.relative(Path(adapter)))}`")
    effects = recorded_effects(record)
    effect = (f"\n\nAdapter effect: {markdown_text(effect_summary(effects))} (the mean log-mel difference from the "
              "render at strength 0, same noise; 0 dB is the same sound)" if effects else "")
    distances = recorded_distances(record)
    if distances:
        effect += ("\n\nLatent distance to the songs the adapter trained on (lower is closer): "
                   f"{markdown_text(distance_summary(distances))}")
    return " · ".join(parts) + effect + f"\n\nFiles in {where}."


def job_summary(ctx: AppContext, job: Job | None) -> str:
    """Markdown: how the newest render job stands (queued behind a GPU job, running, failed)."""
    if job is None:
        return "No render yet: pick an adapter, write a caption and press **Render**."
    out = job_out_folder(job)
    text = job_heading(job, ctx.jobs.list_jobs()) + f" · {markdown_text(job.label)}"
    if not job.finished:  # queued or running
        return text + (f", writing to `{markdown_text(ctx.workspace.relative(out))}`" if out else "")
    if job.status != DONE and job.message:
        return text + f": {markdown_text(job.message)}"
    return text


def render_view(ctx: AppContext, folder_text: str | None) -> list:
    """The updates of the description and of the MAX_STRENGTHS player and image slots for a render."""
    folder = ctx.workspace.check_path(folder_text, what="render folder") if folder_text else None
    files = render_files(folder) if folder is not None and folder.is_dir() else []
    description = render_description(ctx, folder) if files else "Pick a render to listen to."
    players, images = [], []
    for i in range(MAX_STRENGTHS):
        if i < len(files):
            label, wav, png = files[i]
            players.append(gr.update(value=str(wav), label=label, visible=True))
            images.append(gr.update(value=str(png) if png else None, label=label, visible=png is not None))
        else:
            players.append(gr.update(value=None, visible=False))
            images.append(gr.update(value=None, visible=False))
    return [description, *players, *images]


def tick_updates(ctx: AppContext, last: str, current: str | None) -> tuple:
    """What a page's timer shows: the newest render job's state, the finished job last put on
    show ("" before the page's first tick, "-" when none was), and the render picked: the newest
    at the first tick, the new one when a render job finishes, else left as it is."""
    job = newest_job(ctx, LISTEN_KIND)
    finished = job.id if job is not None and job.status == DONE else None
    if last and (finished is None or finished == last):
        return job_summary(ctx, job), last, gr.skip()
    choices = render_folders(ctx)
    out = job_out_folder(job) if finished and last else None
    value = ctx.workspace.relative(out) if out else (current or (choices[0] if choices else None))
    picked = gr.Dropdown(choices=choices, value=value if value in choices else None)
    return job_summary(ctx, job), finished or "-", picked


# ---- the tab ---------------------------------------------------------------------------------------

def build_listen_tab(ctx: AppContext) -> None:
    """Add the Listen tab's components and events to the current Blocks context."""
    gr.Markdown("Render a trained adapter with your own caption (include the trigger tag) and lyrics, at several "
                "strengths from the same noise: strength 0 is the base model, 1 the adapter as trained. A render "
                "is a job; on the GPU it waits while training runs, on the cpu device it runs at once, slowly.")
    picker = build_adapter_picker(ctx, "listen")
    prompt0 = default_prompt(ctx, picker.run0)
    caption = gr.Textbox(prompt0.caption, label="Caption", lines=2, elem_id="listen-caption")
    lyrics = gr.Textbox(prompt0.lyrics, label="Lyrics (empty: instrumental)", lines=4, elem_id="listen-lyrics")
    with gr.Row():
        duration = gr.Number(20, label="Seconds", minimum=1, maximum=MAX_SECONDS, elem_id="listen-duration")
        seed = gr.Number(0, label="Seed", precision=0, minimum=0, elem_id="listen-seed")
        strengths = gr.Textbox("0, 1", label=f"Strengths (up to {MAX_STRENGTHS}, 0 to 2)", elem_id="listen-strengths")
        language = gr.Textbox(prompt0.language, label="Lyrics language", elem_id="listen-language")
    with gr.Accordion("Tempo, key, sampling (steps, shift, guidance), device, DiT weights", open=False):
        with gr.Row():
            bpm = gr.Number(prompt0.bpm, label="BPM (empty: not in the prompt)", elem_id="listen-bpm")
            key = gr.Textbox(prompt0.key, label="Key, e.g. C major", elem_id="listen-key")
            time_signature = gr.Textbox(prompt0.time_signature, label="Time signature, e.g. 4",
                                        elem_id="listen-time-signature")
        with gr.Row():
            steps = gr.Number(None, precision=0, label="Sampling steps (empty: turbo 8, base/sft 50)",
                              elem_id="listen-steps")
            shift = gr.Number(None, label="Timestep shift (empty: turbo 3, base/sft 1; turbo takes 1, 2 or 3)",
                              elem_id="listen-shift")
            guidance_scale = gr.Number(None, label="Guidance scale (empty: base/sft 7; turbo: none, refuses more "
                                       "than 1)", elem_id="listen-guidance-scale")
            guidance = gr.Dropdown(list(GUIDANCE_METHODS), value="apg", label="Guidance method, base/sft (default: "
                                   "apg; cfg: plain CFG)", elem_id="listen-guidance")
        with gr.Row():
            device = gr.Dropdown(list(DEVICES), value="auto", label="Device", allow_custom_value=True,
                                 elem_id="listen-device")
            quantization = gr.Dropdown(list(QUANTIZATIONS), value=default_quantization(ctx, picker.run0),
                                       label="DiT weights (nf4: 4 bits, for the XL models on small cards)",
                                       elem_id="listen-quantization")
    render = gr.Button("Render", variant="primary", elem_id="listen-render")
    status = gr.Markdown(lambda: job_summary(ctx, newest_job(ctx, LISTEN_KIND)), elem_id="listen-status")
    shown = gr.Dropdown(render_folders(ctx), value=None, label="Render", elem_id="listen-renders")
    description = gr.Markdown(elem_id="listen-description")
    with gr.Row():
        columns = [gr.Column(min_width=240) for _ in range(MAX_STRENGTHS)]
    players, images = [], []
    for i, column in enumerate(columns):
        with column:
            players.append(gr.Audio(type="filepath", interactive=False, visible=False, elem_id=f"listen-audio-{i}"))
            images.append(gr.Image(type="filepath", interactive=False, visible=False, show_label=False,
                                   elem_id=f"listen-image-{i}"))
    with gr.Accordion("Render jobs: the queue, logs, stop", open=False):
        build_jobs_panel(ctx, [LISTEN_KIND], "listen-jobs")
    timer = gr.Timer(POLL_SECONDS)  # the panel's own timer does not tick while its accordion is closed
    announced = gr.State("")  # the finished job whose render was put on show ("" until the page's first tick)

    def on_render(run, checkpoint, caption_text, lyrics_text, language_code, seconds, seed_value, strength_list,
                  bpm_value, key_text, signature, step_count, shift_value, scale, method, device_name, weights,
                  request: gr.Request):
        form = ListenForm(run, checkpoint, caption_text, lyrics_text, language_code, seconds, seed_value,
                          strength_list, bpm_value, key_text, signature, step_count, shift=shift_value,
                          guidance_scale=scale, guidance=method, device=device_name, quantization=weights)
        job = start_listen(ctx, form, owner_of(request))
        gr.Info(f"Render queued as job {job.id}.")
        return job_summary(ctx, job), *ticks.hurry()

    # the picker and the render's state: one event a tick
    ticks = Ticks(timer, busy=lambda: any_active(ctx, [LISTEN_KIND]))
    picker.wire(ctx, [], lambda run, checkpoint: (), ticks)
    picker.run.change(friendly(lambda run: tuple(default_prompt(ctx, run))), inputs=[picker.run],
                      outputs=[caption, lyrics, language, bpm, key, time_signature])
    picker.checkpoint.change(friendly(lambda run, checkpoint: default_quantization(ctx, run, checkpoint)),
                             inputs=[picker.run, picker.checkpoint], outputs=[quantization])
    form = [picker.run, picker.checkpoint, caption, lyrics, language, duration, seed, strengths, bpm, key,
            time_signature, steps, shift, guidance_scale, guidance, device, quantization]
    render.click(friendly(on_render), inputs=form, outputs=[status, *ticks.pace_outputs])
    ticks.add(friendly(lambda last, current: tick_updates(ctx, last, current)), [announced, shown],
              [status, announced, shown])
    ticks.wire()
    shown.focus(lambda: gr.update(choices=render_folders(ctx)), outputs=[shown])
    shown.change(friendly(lambda folder: render_view(ctx, folder)), inputs=[shown],
                 outputs=[description, *players, *images])
