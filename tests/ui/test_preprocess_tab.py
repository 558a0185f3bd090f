"""The Preprocess tab: the command line its form builds, what it refuses, the progress it reads
back from a job's events, and a real preprocess job with the tiny checkpoints on rendered music."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import gradio as gr
import pytest

from acestep.commands.common import format_clock
from acestep.errors import AceStepError
from acestep.jobs.runner import PROGRESS_LINE
from acestep.ui import preprocess_tab
from acestep.ui.jobs_panel import buttons, cancel_job
from acestep.ui.context import AppContext, PathRefused, Workspace
from acestep.ui.preprocess_tab import (
    PREPROCESS,
    PreprocessForm,
    dataset_choices,
    default_checkpoint,
    default_dataset,
    default_out,
    manifest_markdown,
    parse_step,
    preprocess_args,
    progress_markdown,
    start_preprocess,
    summary_markdown,
)


@pytest.fixture
def ctx(tmp_path, tiny_checkpoints) -> AppContext:
    return AppContext.create(Workspace(tmp_path / "workspace", checkpoints=tiny_checkpoints))


@pytest.fixture
def dataset_file(ctx) -> Path:
    path = ctx.workspace.datasets / "my-songs.json"
    path.write_text("{}")
    return path


def progress_line(index: int, total: int, status: str, source: str, message: str, elapsed, eta) -> str:
    """A line as `acestep-trainer preprocess` prints it (commands/data.py)."""
    detail = f"  {message}" if message else ""
    return (f"[{index:>{len(str(total))}}/{total}] {status:8s} {source}{detail}   "
            f"elapsed {format_clock(elapsed)}  ETA {format_clock(eta)}")


def progress_event(line: str) -> dict:
    """The event the job runner makes of a `[i/n] ...` output line."""
    match = PROGRESS_LINE.match(line)
    return {"type": "progress", "index": int(match[1]), "total": int(match[2]), "message": match[3].strip()}


def test_the_form_becomes_the_preprocess_command_line(ctx, dataset_file):
    assert dataset_choices(ctx) == ["datasets/my-songs.json"] and default_dataset(ctx) == "datasets/my-songs.json"
    older = ctx.workspace.datasets / "a-first.json"  # listed first, saved before: the newest is the default
    older.write_text("{}")
    os.utime(older, (dataset_file.stat().st_mtime - 60,) * 2)
    assert dataset_choices(ctx)[0] == "datasets/a-first.json" and default_dataset(ctx) == "datasets/my-songs.json"
    assert default_out(ctx, "datasets/my-songs.json") == "tensors/my-songs"
    assert "acestep-v15-turbo" in ctx.workspace.dit_names() and default_checkpoint(ctx) == "acestep-v15-turbo"
    form = PreprocessForm(dataset="datasets/my-songs.json", out="tensors/my-songs", max_duration=30,
                          normalization="peak_lufs", low_vram=True, device="cuda:1")
    assert preprocess_args(ctx, form) == [
        "preprocess", "--dataset", str(dataset_file), "--checkpoint", "acestep-v15-turbo",
        "--out", str(ctx.workspace.tensors / "my-songs"), "--max-duration", "30", "--normalization", "peak_lufs",
        "--checkpoints-dir", str(ctx.workspace.checkpoints), "--verbose", "--low-vram", "--device", "cuda:1"]


def test_the_demo_dataset_is_offered_first(tmp_path, tiny_checkpoints):
    workspace = Workspace(tmp_path / "workspace", checkpoints=tiny_checkpoints)
    ctx = AppContext.create(workspace, defaults={"dataset": workspace.root / "audio" / "demo" / "demo.json"})
    (workspace.datasets / "other.json").write_text("{}")
    assert dataset_choices(ctx) == ["audio/demo/demo.json", "datasets/other.json"]
    assert default_dataset(ctx) == "audio/demo/demo.json" and default_out(ctx, default_dataset(ctx)) == "tensors/demo"


def test_datasets_saved_in_sub_folders_or_as_upper_case_json_are_offered(ctx, dataset_file):
    nested = ctx.workspace.datasets / "sub" / "nested.json"  # both as the Dataset tab's Save writes them
    nested.parent.mkdir()
    nested.write_text("{}")
    upper = ctx.workspace.datasets / "Upper.JSON"
    upper.write_text("{}")
    os.utime(dataset_file, (upper.stat().st_mtime - 60,) * 2)
    os.utime(nested, (upper.stat().st_mtime - 60,) * 2)
    assert dataset_choices(ctx) == ["datasets/Upper.JSON", "datasets/my-songs.json", "datasets/sub/nested.json"]
    assert default_dataset(ctx) == "datasets/Upper.JSON"  # the newest, whatever its case
    assert default_out(ctx, "datasets/Upper.JSON") == "tensors/Upper"


def focus_handler(app, elem_id: str):
    """The function the focus of the component `elem_id` runs."""
    block = next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == elem_id)
    return next(fn.fn for fn in app.fns.values() if (block._id, "focus") in fn.targets)


def test_the_lists_read_again_when_opened_keep_the_chosen_item_in_its_place(tmp_path, tiny_checkpoints):
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(tiny_checkpoints / "acestep-v15-turbo", checkpoints / "acestep-v15-turbo")
    workspace = Workspace(tmp_path / "workspace", checkpoints=checkpoints)
    ctx = AppContext.create(workspace, defaults={"dataset": workspace.datasets / "demo.json"})
    (workspace.datasets / "demo.json").write_text("{}")
    with gr.Blocks() as app:
        preprocess_tab.build_preprocess_tab(ctx)
    (workspace.datasets / "copy-b.json").write_text("{}")  # saved after the page loaded
    # Sorted, copy-b would take demo's place, which Gradio ticks while the list is open: Enter then
    # picked copy-b (and Start preprocessed it). It goes at the end.
    update, shown = focus_handler(app, "preprocess-dataset")("datasets/demo.json", ["datasets/demo.json"])
    assert update == gr.update(choices=["datasets/demo.json", "datasets/copy-b.json"]) and shown == update["choices"]
    assert focus_handler(app, "preprocess-dataset")("datasets/demo.json", shown) == gr.skip()  # nothing new
    shutil.copytree(checkpoints / "acestep-v15-turbo", checkpoints / "a-new-dit")  # downloaded since
    update, shown = focus_handler(app, "preprocess-checkpoint")("acestep-v15-turbo", ["acestep-v15-turbo"])
    assert shown == ["acestep-v15-turbo", "a-new-dit"] and update["choices"] == shown and "value" not in update


def test_it_is_a_gpu_job_unless_the_device_is_cpu(ctx, dataset_file, monkeypatch):
    submitted = []
    monkeypatch.setattr(preprocess_tab, "submit_cli_job",
                        lambda ctx, kind, args, needs_gpu, label="", owner="", gpus=None: submitted.append(
                            (kind, needs_gpu, label, owner)))
    for device in ("auto", "cuda", "cpu"):
        start_preprocess(ctx, PreprocessForm("datasets/my-songs.json", "tensors/x", device=device), owner="ann")
    assert submitted == [(PREPROCESS, True, "my-songs -> tensors/x", "ann"),
                         (PREPROCESS, True, "my-songs -> tensors/x", "ann"),
                         (PREPROCESS, False, "my-songs -> tensors/x", "ann")]


def test_bad_form_values_are_refused_with_what_to_do(ctx, dataset_file, tmp_path):
    def args(**changes):
        return preprocess_args(ctx, PreprocessForm(**{"dataset": "datasets/my-songs.json", "out": "tensors/x",
                                                      **changes}))

    with pytest.raises(PathRefused, match="outside the folders this app may use"):
        args(out=str(tmp_path / "elsewhere"))
    with pytest.raises(PathRefused, match="dataset .* does not exist"):
        args(dataset="datasets/missing.json")
    with pytest.raises(AceStepError, match="not a dataset JSON"):
        args(dataset="datasets")
    with pytest.raises(AceStepError, match="No DiT folder 'acestep-v15-base'.*trainer download acestep-v15-base"):
        args(checkpoint="acestep-v15-base")
    with pytest.raises(AceStepError, match="No DiT folder 'vae'"):
        args(checkpoint="vae")
    with pytest.raises(AceStepError, match="at most 600 seconds"):
        args(max_duration=700)
    with pytest.raises(AceStepError, match="Normalisation 'loud' is unknown"):
        args(normalization="loud")
    with pytest.raises(AceStepError, match="Device 'gpu'"):
        args(device="gpu")
    with pytest.raises(gr.Error, match="outside the folders"):
        preprocess_tab.friendly(start_preprocess)(ctx, PreprocessForm("datasets/my-songs.json", "/tmp"))
    assert ctx.jobs.list_jobs() == []


def test_start_is_refused_and_cancel_works_while_a_job_runs(ctx, dataset_file):
    sleeper = ctx.jobs.submit(PREPROCESS, [sys.executable, "-c", "import time; time.sleep(60)"], needs_gpu=False)
    assert buttons(ctx, PREPROCESS) == (gr.update(interactive=False), gr.update(interactive=True))
    assert progress_markdown(ctx, sleeper) == f"Job **{sleeper.id}**: **running**\n\nLoading the encoders..."
    with pytest.raises(AceStepError, match=f"Preprocess job {sleeper.id} is running"):
        start_preprocess(ctx, PreprocessForm("datasets/my-songs.json", "tensors/x", device="cpu"))
    assert cancel_job(ctx, PREPROCESS) == f"Job {sleeper.id}: stopping."
    assert ctx.jobs.wait(sleeper.id, timeout=30).status == "stopped"
    assert buttons(ctx, PREPROCESS) == (gr.update(interactive=True), gr.update(interactive=False))
    assert summary_markdown(ctx, ctx.jobs.get(sleeper.id)).startswith(f"Job **{sleeper.id}** stopped")


def test_progress_is_read_from_the_commands_lines():
    step = parse_step(progress_event(progress_line(3, 12, "done", "songs/a b.wav", "187 frames", 65, 130)))
    assert (step.index, step.total, step.status, step.source, step.detail, step.elapsed, step.eta) == (
        3, 12, "done", "songs/a b.wav", "187 frames", "1:05", "2:10")
    step = parse_step(progress_event(progress_line(1, 2, "failed", "x.wav", "x.wav: not audio", 1, None)))
    assert (step.status, step.detail, step.eta) == ("failed", "x.wav: not audio", "--:--")
    step = parse_step(progress_event(progress_line(2, 2, "encoding", "songs/long song.wav", "", 5, None)))
    assert (step.index, step.status, step.source, step.detail, step.eta) == (
        2, "encoding", "songs/long song.wav", "", "--:--")
    step = parse_step(progress_event(progress_line(2, 2, "pass 2", "y.flac", "", 5, 0)))
    assert (step.status, step.source, step.detail) == ("pass 2", "y.flac", "")
    assert parse_step({"type": "start"}) is None


def test_the_manifest_summary_lists_failures(ctx):
    folder = ctx.workspace.tensors / "x"
    folder.mkdir()
    assert manifest_markdown(ctx, folder) == ""
    (folder / "manifest.json").write_text(json.dumps({
        "format_version": 1, "model": {"checkpoint": "/c/acestep-v15-turbo", "variant": "turbo"},
        "settings": {"max_duration": 240.0, "normalization": "none"}, "trigger_tag": "mystyle",
        "samples": [{"duration": 10.0}, {"duration": 2.5}],
        "failed": [{"source": "a|b.wav", "reason": "not\naudio"}]}))
    text = manifest_markdown(ctx, folder)
    assert "**tensors/x**: 2 sample(s), 12.5 s of audio, 1 failed; made with acestep-v15-turbo (turbo)" in text
    assert "| a\\|b.wav | not audio |" in text
    assert summary_markdown(ctx, None, "tensors/x").startswith("Already in the output folder")
    (folder / "manifest.json").write_text("{oops")
    assert "cannot be read" in manifest_markdown(ctx, folder)


@pytest.mark.slow
def test_a_real_preprocess_job_writes_a_manifest_and_reports_failures(ctx, real_songs):
    from acestep.dataset import Sample, build_dataset, save_dataset

    songs = ctx.workspace.audio / "songs"
    songs.mkdir(parents=True)
    for clip in real_songs:
        shutil.copy(clip, songs / clip.name)
    dataset = build_dataset(songs, trigger_tag="mystyle", language="en").dataset
    (songs / "broken.wav").write_text("this is not audio")
    dataset.samples.append(Sample(audio="broken.wav", caption="oops"))
    save_dataset(dataset, ctx.workspace.datasets / "songs.json")

    form = PreprocessForm(dataset="datasets/songs.json", out=default_out(ctx, "datasets/songs.json"),
                          max_duration=4, device="cpu")
    job = start_preprocess(ctx, form, owner="ann")
    assert not job.needs_gpu
    job = ctx.jobs.wait(job.id, timeout=600)
    log = ctx.jobs.tail_log(job.id, 200)
    assert job.status == "done" and job.exit_code == 2, log  # broken.wav failed, the songs were encoded

    manifest = json.loads((ctx.workspace.tensors / "songs" / "manifest.json").read_text())
    # The dataset JSON lies outside the audio folder, so it lists absolute paths.
    assert sorted(s["source"] for s in manifest["samples"]) == sorted(str(songs / clip.name) for clip in real_songs)
    assert [f["source"] for f in manifest["failed"]] == [str(songs / "broken.wav")]

    assert "**3/3** audio/songs/broken.wav failed" in progress_markdown(ctx, job)
    summary = summary_markdown(ctx, job)
    assert summary.startswith(f"Job **{job.id}** done: 2 encoded, 0 unchanged (skipped), 1 failed")
    assert "**tensors/songs**: 2 sample(s), 8.0 s of audio, 1 failed; made with acestep-v15-turbo (turbo)" in summary
    assert "| audio/songs/broken.wav | " in summary  # shown relative to the workspace
    assert buttons(ctx, PREPROCESS) == (gr.update(interactive=True), gr.update(interactive=False))
