"""The Export & Merge tab: pick a run and one of its adapters (final/, best/, a step checkpoint),
export it in the formats other tools load (`acestep-trainer export`), or merge it into its base
model as a new checkpoint folder (`acestep-trainer merge`). Both run as CPU jobs: export loads
the DiT on the CPU to verify each file, merge streams the weights one tensor at a time.

The UI reads folders and JSON only; `acestep.export` (torch) runs in the job's process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from acestep.errors import AceStepError
from acestep.files import free_folder, size_text
from acestep.jobs import DONE, Job
from acestep.training.run_folders import adapter_in_run, adapter_kind, adapter_metadata, run_folder
from acestep.ui.adapter_picker import build_adapter_picker, picked_adapter
from acestep.ui.context import WORKSPACE_FOLDERS, AppContext
from acestep.ui.jobs_panel import any_active, build_jobs_panel, friendly, job_out_folder, owner_of, submit_cli_job
from acestep.ui.ticks import POLL_SECONDS, Ticks

FORMATS = ("peft", "comfyui", "diffusers", "lycoris")  # `acestep-trainer export --format`
FORMATS_BY_KIND = {"lora": ("peft", "comfyui", "diffusers"), "dora": ("peft", "diffusers"), "lokr": ("lycoris",)}
# `acestep.export.formats.DEFAULT_FORMATS`, without loading torch into the app (a test keeps them equal)
DEFAULT_FORMATS = {"lora": ("peft", "comfyui"), "dora": ("peft",), "lokr": ("lycoris",)}
MERGE_DTYPES = ("bf16", "fp16", "fp32", "keep")
MERGE_INFO = "merge_info.json"  # written into every merged folder by acestep.export.merge
EXPORT_FILE_SUFFIXES = ("_comfyui.safetensors", "_diffusers.safetensors", "_lycoris.safetensors")
JOB_KINDS = ("export", "merge")
MAX_LISTED_FILES = 40


class ExportRefused(AceStepError):
    """The export or merge form asks for something that cannot be done (the message says why)."""


@dataclass
class ExportForm:
    run: str
    checkpoint: str  # final, best, checkpoints/step-N
    formats: list[str] = field(default_factory=list)
    output: str = ""
    overwrite: bool = False


@dataclass
class MergeForm:
    run: str
    checkpoint: str
    base: str = ""  # a DiT folder name in the checkpoints folder
    strength: float = 1.0
    dtype: str = "bf16"
    output: str = ""
    overwrite: bool = False


# ---- choices and defaults ------------------------------------------------------------------------

def format_choices(kind: str) -> tuple[str, ...]:
    return FORMATS_BY_KIND.get(kind, FORMATS)


def default_base_model(ctx: AppContext, adapter: Path) -> str | None:
    """The DiT the adapter was trained on when it is in the checkpoints folder, else the first one."""
    choices = ctx.workspace.dit_names(complete_only=True)
    trained_on = Path(str(adapter_metadata(adapter).get("checkpoint") or "")).name
    return trained_on if trained_on in choices else (choices[0] if choices else None)


def _slug(checkpoint: str) -> str:
    return Path(checkpoint).name  # final, best, step-000120


def default_export_output(ctx: AppContext, run: str, checkpoint: str) -> str:
    """`outputs/<run>-<checkpoint>` (numbered when taken), relative to the workspace."""
    if not run or not checkpoint:
        return ""
    return ctx.workspace.relative(free_folder(ctx.workspace.outputs / f"{run}-{_slug(checkpoint)}"))


def default_merge_output(ctx: AppContext, run: str, checkpoint: str, base: str) -> str:
    """`<checkpoints>/<base>-<run>-<checkpoint>` (numbered when taken): a merged model sits beside
    the others, so every tab finds it and it shares their vae/ and text encoder."""
    if not run or not checkpoint or not base:
        return ""
    return ctx.workspace.relative(free_folder(ctx.workspace.checkpoints / f"{base}-{run}-{_slug(checkpoint)}"))


# ---- checks and command lines ---------------------------------------------------------------------

def _looks_like_export(folder: Path) -> bool:
    entries = list(folder.iterdir())
    return bool(entries) and all((entry.name == "peft" and entry.is_dir()) or entry.name.endswith(EXPORT_FILE_SUFFIXES)
                                 for entry in entries)


def check_output_folder(ctx: AppContext, text: str, overwrite: bool, replaceable, protected: tuple[Path, ...] = ()
                        ) -> Path:
    """The output folder `text` resolved inside the workspace. Refused (ExportRefused or
    PathRefused) when it is a root or a workspace folder, holds one of `protected`, is a file, or
    is not empty, unless `overwrite` and `replaceable(folder)` says it holds an earlier result of
    the same command (nothing else is ever deleted)."""
    out = ctx.workspace.check_path(text, what="output folder")
    ws = ctx.workspace
    guarded = (*ws.roots(), *(ws.root / name for name in WORKSPACE_FOLDERS), ws.jobs)
    if out in guarded:
        raise ExportRefused(f"{out} is one of the app's folders; choose a new folder inside it, e.g. "
                            f"{ws.relative(out / 'my-export')}.")
    for path in protected:
        if path.resolve() == out or path.resolve().is_relative_to(out):
            raise ExportRefused(f"The output folder {out} holds {path}; choose another folder.")
    if out.exists() and not out.is_dir():
        raise ExportRefused(f"{out} is a file; choose a folder.")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ExportRefused(f"{out} is not empty: choose another folder, or tick 'Replace' to replace it.")
        if not replaceable(out):
            raise ExportRefused(f"{out} holds other files than an earlier result; it is never replaced. "
                                "Choose another folder.")
    return out


def export_args(ctx: AppContext, form: ExportForm) -> list[str]:
    """The `export` command line the form asks for (without the Python in front). Raises
    RunFolderError, ExportRefused or PathRefused naming what is wrong."""
    run = run_folder(ctx.workspace.runs, form.run)
    adapter = adapter_in_run(run, form.checkpoint)
    kind = adapter_kind(adapter)
    formats = [f for f in FORMATS if f in (form.formats or [])]
    if not formats:
        raise ExportRefused("Tick at least one export format.")
    wrong = [f for f in formats if f not in format_choices(kind)]
    if wrong:
        raise ExportRefused(f"A {kind} adapter cannot be exported as {', '.join(wrong)}; it exports as "
                            f"{', '.join(format_choices(kind))}.")
    out = check_output_folder(ctx, form.output, form.overwrite, _looks_like_export, protected=(run,))
    args = ["export", str(adapter), "--out", str(out)]
    for name in formats:
        args += ["--format", name]
    args += ["--checkpoints-dir", str(ctx.workspace.checkpoints)]
    return args + (["--overwrite"] if form.overwrite else [])


def merge_args(ctx: AppContext, form: MergeForm) -> list[str]:
    """The `merge` command line the form asks for. Raises RunFolderError, ExportRefused or
    PathRefused naming what is wrong."""
    run = run_folder(ctx.workspace.runs, form.run)
    adapter = adapter_in_run(run, form.checkpoint)
    bases = ctx.workspace.dit_names(complete_only=True)
    if form.base not in bases:
        raise ExportRefused(f"No complete DiT folder {form.base!r} in {ctx.workspace.checkpoints} "
                            f"(found: {', '.join(bases) or 'none'}); pick the model the run was trained on.")
    strength = float(form.strength)
    if not math.isfinite(strength) or not 0 < strength <= 2:
        raise ExportRefused(f"Merge strength {form.strength}: use a value above 0 and at most 2 (1 = as trained).")
    if form.dtype not in MERGE_DTYPES:
        raise ExportRefused(f"Merge dtype {form.dtype!r}: choose {', '.join(MERGE_DTYPES)}.")
    base = ctx.workspace.checkpoints / form.base
    out = check_output_folder(ctx, form.output, form.overwrite, lambda folder: (folder / MERGE_INFO).is_file(),
                              protected=(run, base))
    args = ["merge", str(adapter), "--checkpoint", form.base, "--out", str(out), "--strength", f"{strength:g}",
            "--dtype", form.dtype, "--checkpoints-dir", str(ctx.workspace.checkpoints)]
    return args + (["--overwrite"] if form.overwrite else [])


def start_export(ctx: AppContext, form: ExportForm, owner: str = "") -> Job:
    """Submit the export as a CPU job (it loads the DiT on the CPU to verify the files)."""
    args = export_args(ctx, form)
    return submit_cli_job(ctx, "export", args, needs_gpu=False, label=f"{form.run}/{_slug(form.checkpoint)}",
                          owner=owner)


def start_merge(ctx: AppContext, form: MergeForm, owner: str = "") -> Job:
    """Submit the merge as a CPU job (it streams the weights on the CPU, one tensor at a time)."""
    args = merge_args(ctx, form)
    return submit_cli_job(ctx, "merge", args, needs_gpu=False,
                          label=f"{form.run}/{_slug(form.checkpoint)} x{float(form.strength):g} into {form.base}",
                          owner=owner)


# ---- results ------------------------------------------------------------------------------------

def output_files(folder: Path) -> list[tuple[str, int]]:
    """(path relative to `folder`, bytes) of every file under it, sorted."""
    if not folder.is_dir():
        return []
    return sorted((str(path.relative_to(folder)), path.stat().st_size) for path in folder.rglob("*") if path.is_file())


def results_markdown(ctx: AppContext, job_id: str = "") -> str:
    """What the picked export/merge job (else the newest one) wrote: its files once done."""
    jobs = [job for job in ctx.jobs.list_jobs() if job.kind in JOB_KINDS]
    job = next((job for job in jobs if job.id == job_id), None) or (jobs[-1] if jobs else None)
    if job is None:
        return "No export or merge yet."
    out = job_out_folder(job)
    where = f"`{ctx.workspace.relative(out)}`" if out else "its folder"
    if not job.finished:
        return f"**{job.kind} {job.label}**: {job.status}, writing to {where}."
    if job.status != DONE:
        return f"**{job.kind} {job.label}**: {job.status}" + (f": {job.message}" if job.message else "")
    files = output_files(out) if out else []
    if not files:
        return f"**{job.kind} {job.label}**: done, but {where} is empty now."
    lines = [f"- `{name}` ({size_text(size)})" for name, size in files[:MAX_LISTED_FILES]]
    if len(files) > MAX_LISTED_FILES:
        lines.append(f"- ... and {len(files) - MAX_LISTED_FILES} more")
    return f"**{job.kind} {job.label}**: done; {len(files)} file(s) in {where}:\n\n" + "\n".join(lines)


# ---- the tab --------------------------------------------------------------------------------------

def picked_updates(ctx: AppContext, run: str | None, checkpoint: str | None) -> tuple:
    """What follows a run or adapter pick besides its description: the formats it exports as, the
    default export folder, the base model and the default merge folder."""
    adapter = picked_adapter(ctx, run, checkpoint)
    if adapter is None:
        return gr.CheckboxGroup(choices=list(FORMATS), value=[]), "", gr.skip(), ""
    kind = adapter_kind(adapter)
    formats = gr.CheckboxGroup(choices=list(format_choices(kind)), value=list(DEFAULT_FORMATS[kind]))
    model = default_base_model(ctx, adapter)
    bases = gr.Dropdown(choices=ctx.workspace.dit_names(complete_only=True), value=model)
    return (formats, default_export_output(ctx, run, checkpoint), bases,
            default_merge_output(ctx, run, checkpoint, model or ""))


def build_export_tab(ctx: AppContext) -> None:
    """Add the Export & Merge tab's components to the current Blocks context."""
    gr.Markdown("Adapters in a run folder are already PEFT folders that official ACE-Step loads. Export them for "
                "ComfyUI or diffusers, or merge one into its base model as a standalone model.")
    picker = build_adapter_picker(ctx, "export")
    run0, checkpoint0 = picker.run0, picker.checkpoint0
    adapter0 = picked_adapter(ctx, run0, checkpoint0)
    kind0 = adapter_kind(adapter0) if adapter0 else "lora"
    base0 = default_base_model(ctx, adapter0) if adapter0 else None
    gr.Markdown("### Export")
    formats = gr.CheckboxGroup(list(format_choices(kind0)), value=list(DEFAULT_FORMATS[kind0]), label="Formats",
                               elem_id="export-format")
    with gr.Row():
        output = gr.Textbox(default_export_output(ctx, run0 or "", checkpoint0 or ""), label="Output folder",
                            scale=3, elem_id="export-output")
        overwrite = gr.Checkbox(False, label="Replace an earlier export there", elem_id="export-overwrite")
    start = gr.Button("Export", variant="primary", elem_id="export-start")
    gr.Markdown("### Merge into the base model")
    with gr.Row():
        base = gr.Dropdown(ctx.workspace.dit_names(complete_only=True), value=base0, label="Base model (DiT)",
                           elem_id="export-merge-base")
        strength = gr.Slider(0.05, 2.0, value=1.0, step=0.05, label="Strength", elem_id="export-strength")
        dtype = gr.Dropdown(list(MERGE_DTYPES), value="bf16", label="Weights", elem_id="export-merge-dtype")
    with gr.Row():
        merge_output = gr.Textbox(default_merge_output(ctx, run0 or "", checkpoint0 or "", base0 or ""),
                                  label="New model folder", scale=3, elem_id="export-merge-output")
        merge_overwrite = gr.Checkbox(False, label="Replace an earlier merge there", elem_id="export-merge-overwrite")
    merge = gr.Button("Merge", elem_id="export-merge")
    gr.Markdown("### Jobs")
    # the jobs, the picker and the results: one event a tick
    ticks = Ticks(gr.Timer(POLL_SECONDS), busy=lambda: any_active(ctx, JOB_KINDS))
    panel = build_jobs_panel(ctx, list(JOB_KINDS), "export", ticks)
    results = gr.Markdown(lambda: results_markdown(ctx), elem_id="export-files")

    def on_export(name, picked, chosen, out, replace, request: gr.Request):
        job = start_export(ctx, ExportForm(name, picked, list(chosen or []), out, bool(replace)), owner_of(request))
        gr.Info(f"Export queued as job {job.id}.")
        return job.id, *ticks.hurry()

    def on_merge(name, picked, model, amount, weights, out, replace, request: gr.Request):
        job = start_merge(ctx, MergeForm(name, picked, model, amount, weights, out, bool(replace)), owner_of(request))
        gr.Info(f"Merge queued as job {job.id}.")
        return job.id, *ticks.hurry()

    run, checkpoint = picker.run, picker.checkpoint
    picker.wire(ctx, [formats, output, base, merge_output], lambda name, picked: picked_updates(ctx, name, picked),
                ticks)
    base.input(friendly(lambda name, picked, model: default_merge_output(ctx, name or "", picked or "", model or "")),
               inputs=[run, checkpoint, base], outputs=[merge_output])
    start.click(friendly(on_export), inputs=[run, checkpoint, formats, output, overwrite],
                outputs=[panel["selected"], *ticks.pace_outputs])
    merge.click(friendly(on_merge), inputs=[run, checkpoint, base, strength, dtype, merge_output, merge_overwrite],
                outputs=[panel["selected"], *ticks.pace_outputs])
    shown_results = friendly(lambda job_id: results_markdown(ctx, job_id))
    panel["selected"].change(shown_results, inputs=[panel["selected"]], outputs=[results])
    ticks.add(shown_results, [panel["selected"]], [results])
    ticks.wire()
