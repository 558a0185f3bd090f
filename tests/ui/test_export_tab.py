"""The Export & Merge tab: the adapters a run offers, the command lines it submits, the output
folders it refuses, and a real export and merge job on a tiny trained run."""

import json
import shutil
import sys
from pathlib import Path

import gradio as gr
import pytest

from acestep.jobs import cli_argv
from acestep.training.run_folders import RunFolderError
from acestep.ui.adapter_picker import checkpoint_choices, run_choices
from acestep.ui.context import AppContext, PathRefused, Workspace
from acestep.ui.export_tab import (
    ExportForm,
    ExportRefused,
    MergeForm,
    build_export_tab,
    default_export_output,
    default_merge_output,
    export_args,
    merge_args,
    results_markdown,
    start_export,
    start_merge,
)

from .conftest import write_run


@pytest.fixture
def ctx(tmp_path, fixture_dir):
    checkpoints = tmp_path / "checkpoints"
    dit = checkpoints / "acestep-v15-turbo"  # a complete-looking DiT folder: the UI reads its config only
    dit.mkdir(parents=True)
    shutil.copy(fixture_dir / "config.json", dit / "config.json")
    (dit / "model.safetensors").write_bytes(b"x")
    (dit / "silence_latent.pt").write_bytes(b"x")
    return AppContext.create(Workspace(tmp_path / "ws", checkpoints=checkpoints))


def test_checkpoint_choices_are_the_complete_adapters(ctx):
    write_run(ctx.workspace.runs, "song")
    (ctx.workspace.runs / "empty").mkdir()
    (ctx.workspace.runs / "empty" / "config.toml").write_text("")
    assert run_choices(ctx) == ["song"]  # a run without adapters is not offered
    assert checkpoint_choices(ctx, "song") == [
        ("final (step 30)", "final"), ("best (step 20)", "best"),
        ("step 20", "checkpoints/step-000020"), ("step 10", "checkpoints/step-000010")]
    assert checkpoint_choices(ctx, "") == []
    with pytest.raises(RunFolderError):
        checkpoint_choices(ctx, "../ws")


def test_export_argv(ctx):
    run = write_run(ctx.workspace.runs, "song")
    out = default_export_output(ctx, "song", "checkpoints/step-000020")
    assert out == "outputs/song-step-000020"
    args = export_args(ctx, ExportForm("song", "checkpoints/step-000020", ["comfyui", "peft"], out))
    ws = ctx.workspace
    assert args == ["export", str(run / "checkpoints" / "step-000020" / "adapter"), "--out",
                    str(ws.outputs / "song-step-000020"), "--format", "peft", "--format", "comfyui",
                    "--checkpoints-dir", str(ws.checkpoints)]
    (ws.outputs / "song-step-000020").mkdir()
    (ws.outputs / "song-step-000020" / "x_comfyui.safetensors").write_text("old")
    assert default_export_output(ctx, "song", "checkpoints/step-000020") == "outputs/song-step-000020-2"
    replaced = export_args(ctx, ExportForm("song", "final", ["diffusers"], out, overwrite=True))
    assert replaced[-4:] == ["diffusers", "--checkpoints-dir", str(ws.checkpoints), "--overwrite"]


def test_formats_must_fit_the_adapter(ctx):
    write_run(ctx.workspace.runs, "lokr-run", "lokr")
    write_run(ctx.workspace.runs, "dora-run", "dora")
    with pytest.raises(ExportRefused, match="lokr adapter cannot be exported as peft"):
        export_args(ctx, ExportForm("lokr-run", "final", ["peft"], "outputs/a"))
    with pytest.raises(ExportRefused, match="dora adapter cannot be exported as comfyui"):
        export_args(ctx, ExportForm("dora-run", "final", ["peft", "comfyui"], "outputs/a"))
    with pytest.raises(ExportRefused, match="at least one"):
        export_args(ctx, ExportForm("dora-run", "final", [], "outputs/a"))
    assert "lycoris" in export_args(ctx, ExportForm("lokr-run", "final", ["lycoris"], "outputs/a"))
    with pytest.raises(RunFolderError, match="no complete adapter 'checkpoints/step-000025'"):
        export_args(ctx, ExportForm("lokr-run", "checkpoints/step-000025", ["lycoris"], "outputs/a"))


def test_the_tab_ticks_the_formats_the_command_exports_by_default():
    from acestep.export import formats  # the command's, which loads torch; the tab keeps a copy without it
    from acestep.ui import export_tab

    assert export_tab.DEFAULT_FORMATS == formats.DEFAULT_FORMATS


def test_output_folders_that_are_refused(ctx, tmp_path):
    write_run(ctx.workspace.runs, "song")
    form = ExportForm("song", "final", ["peft"], "")
    for outside in (str(tmp_path / "elsewhere"), "../outside", "/etc/acestep"):
        form.output = outside
        with pytest.raises(PathRefused, match="outside the folders this app may use"):
            export_args(ctx, form)
    for app_folder in ("outputs", ".", "runs", str(ctx.workspace.checkpoints)):
        form.output = app_folder
        with pytest.raises(ExportRefused, match="one of the app's folders"):
            export_args(ctx, form)
    form.output, form.overwrite = "runs/song/final/..", True  # the run itself
    with pytest.raises(ExportRefused):
        export_args(ctx, form)
    other = ctx.workspace.outputs / "notes"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    form.output, form.overwrite = "outputs/notes", False
    with pytest.raises(ExportRefused, match="not empty"):
        export_args(ctx, form)
    form.overwrite = True  # never deletes what is not an earlier export
    with pytest.raises(ExportRefused, match="other files than an earlier result"):
        export_args(ctx, form)
    assert (other / "notes.txt").read_text() == "mine"


def test_merge_argv_and_checks(ctx):
    run = write_run(ctx.workspace.runs, "song")
    ws = ctx.workspace
    out = default_merge_output(ctx, "song", "best", "acestep-v15-turbo")
    assert out == str(ws.checkpoints / "acestep-v15-turbo-song-best")
    args = merge_args(ctx, MergeForm("song", "best", "acestep-v15-turbo", 0.75, "bf16", out))
    assert args == ["merge", str(run / "best"), "--checkpoint", "acestep-v15-turbo", "--out", out, "--strength",
                    "0.75", "--dtype", "bf16", "--checkpoints-dir", str(ws.checkpoints)]
    for strength in (0, -1, 2.5, float("nan")):
        with pytest.raises(ExportRefused, match="strength"):
            merge_args(ctx, MergeForm("song", "best", "acestep-v15-turbo", strength, "bf16", out))
    with pytest.raises(ExportRefused, match="No complete DiT folder 'acestep-v15-base'"):
        merge_args(ctx, MergeForm("song", "best", "acestep-v15-base", 1.0, "bf16", out))
    with pytest.raises(ExportRefused, match="holds"):  # never over the base model itself
        merge_args(ctx, MergeForm("song", "best", "acestep-v15-turbo", 1.0, "bf16",
                                  str(ws.checkpoints / "acestep-v15-turbo"), overwrite=True))


def test_tab_builds_with_its_element_ids(ctx):
    write_run(ctx.workspace.runs, "song")
    with gr.Blocks() as app:
        build_export_tab(ctx)
    ids = {block.elem_id for block in app.blocks.values()}
    assert {"export-run", "export-checkpoint", "export-format", "export-output", "export-start",
            "export-merge"} <= ids


@pytest.mark.slow
def test_export_and_merge_jobs_on_a_trained_run(trained):
    ctx = trained
    assert run_choices(ctx) == ["tiny"] and "final" in [name for _, name in checkpoint_choices(ctx, "tiny")]
    export = start_export(ctx, ExportForm("tiny", "final", ["peft", "comfyui"], default_export_output(ctx, "tiny",
                                                                                                     "final")))
    merged_out = default_merge_output(ctx, "tiny", "final", "acestep-v15-turbo")
    merge = start_merge(ctx, MergeForm("tiny", "final", "acestep-v15-turbo", 0.5, "fp32", merged_out))
    assert export.argv[:3] == cli_argv()[:3] == [sys.executable, "-m", "acestep.cli"] and not export.needs_gpu
    export, merge = ctx.jobs.wait(export.id, timeout=300), ctx.jobs.wait(merge.id, timeout=300)
    assert export.status == "done", ctx.jobs.tail_log(export.id)
    assert merge.status == "done", ctx.jobs.tail_log(merge.id)

    out = ctx.workspace.outputs / "tiny-final"
    assert (out / "peft" / "adapter_model.safetensors").is_file() and (out / "peft" / "adapter_config.json").is_file()
    comfy = list(out.glob("mystyle-step*_comfyui.safetensors"))
    assert len(comfy) == 1 and comfy[0].stat().st_size > 0
    listing = results_markdown(ctx, export.id)
    assert "done; 4 file(s) in `outputs/tiny-final`" in listing and f"`{comfy[0].name}`" in listing

    merged = Path(merged_out)
    assert (merged / "model.safetensors").is_file() and (merged / "config.json").is_file()
    info = json.loads((merged / "merge_info.json").read_text())
    assert info["strength"] == 0.5 and info["dtype"] == "fp32" and info["modules_merged"] > 0
    assert "acestep-v15-turbo-tiny-final" in ctx.workspace.dit_names(complete_only=True)  # a model now
