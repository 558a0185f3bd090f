"""The Caption tab: the command line its form builds, the paths it refuses, the progress it reads
back from a job's events, and a real analysis-only caption job on rendered music."""

from __future__ import annotations

import json
import shutil
import sys

import gradio as gr
import pytest

from acestep.errors import AceStepError
from acestep.jobs.runner import PROGRESS_LINE
from acestep.ui import caption_tab
from acestep.ui.caption_tab import (
    CAPTION,
    NOT_LABELLED,
    CaptionForm,
    caption_args,
    parse_label_step,
    progress_markdown,
    result_rows,
    start_caption,
)
from acestep.ui.context import PathRefused
from acestep.ui.jobs_panel import buttons, cancel_job, check_device, markdown_text, summary_from_log


def progress_event(line: str) -> dict:
    """The event the job runner makes of a `[i/n] ...` output line."""
    match = PROGRESS_LINE.match(line)
    return {"type": "progress", "index": int(match[1]), "total": int(match[2]), "message": match[3].strip()}


def test_the_form_becomes_the_caption_command_line(ctx, songs):
    form = CaptionForm(folder="audio/songs", labeller="lm", transcribe=True, analysis=False, mode="overwrite",
                       max_seconds=120, device="cuda:1", lm="acestep-5Hz-lm-4B", write_csv=True, use_cache=False)
    assert caption_args(ctx, form) == [
        "caption", str(songs), "--labeller", "lm", "--mode", "overwrite", "--max-seconds", "120",
        "--checkpoints-dir", str(ctx.workspace.checkpoints), "--transcribe", "--no-analysis",
        "--lm", "acestep-5Hz-lm-4B", "--device", "cuda:1", "--csv", str(songs / "labels.csv"), "--no-cache"]
    # The defaults: the captioner, fill-missing, the best device, analysis on, cache on.
    assert caption_args(ctx, CaptionForm(folder=str(songs))) == [
        "caption", str(songs), "--labeller", "captioner", "--mode", "fill-missing", "--max-seconds", "240",
        "--checkpoints-dir", str(ctx.workspace.checkpoints)]
    # The analysis labeller always analyses: "analysis off" cannot turn it into a no-op.
    assert "--no-analysis" not in caption_args(ctx, CaptionForm(folder="audio/songs", labeller="analysis",
                                                                analysis=False))


def test_a_model_labeller_is_a_gpu_job_and_analysis_only_a_cpu_job(ctx, songs, monkeypatch):
    submitted = []
    monkeypatch.setattr(caption_tab, "submit_cli_job",
                        lambda ctx, kind, args, needs_gpu, label="", owner="", gpus=None: submitted.append(
                            (kind, needs_gpu, label, owner)))
    for form in (CaptionForm("audio/songs", "captioner"), CaptionForm("audio/songs", "analysis"),
                 CaptionForm("audio/songs", "analysis", transcribe=True),
                 CaptionForm("audio/songs", "lm", device="cpu")):
        start_caption(ctx, form, owner="ann")
    assert submitted == [(CAPTION, True, "audio/songs", "ann"), (CAPTION, False, "audio/songs", "ann"),
                         (CAPTION, True, "audio/songs", "ann"), (CAPTION, False, "audio/songs", "ann")]


def test_a_folder_outside_the_workspace_is_refused(ctx, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with pytest.raises(PathRefused, match="outside the folders this app may use"):
        caption_args(ctx, CaptionForm(folder=str(outside), labeller="analysis"))
    with pytest.raises(PathRefused, match="outside"):
        caption_args(ctx, CaptionForm(folder="../elsewhere", labeller="analysis"))
    with pytest.raises(PathRefused, match="outside"):
        result_rows(ctx, str(outside))
    with pytest.raises(PathRefused, match="does not exist"):
        caption_args(ctx, CaptionForm(folder="audio/missing"))
    # In the page it is a message, not a traceback, and no job is started.
    with pytest.raises(gr.Error, match="outside the folders"):
        caption_tab.friendly(start_caption)(ctx, CaptionForm(folder=str(outside), labeller="analysis"))
    assert ctx.jobs.list_jobs() == []


def test_bad_form_values_name_the_field(ctx, songs):
    with pytest.raises(AceStepError, match="Device 'gpu0'"):
        caption_args(ctx, CaptionForm(folder="audio/songs", device="gpu0"))
    with pytest.raises(AceStepError, match="Seconds per song must be more than 0"):
        caption_args(ctx, CaptionForm(folder="audio/songs", max_seconds=0))
    with pytest.raises(AceStepError, match="Labeller 'whisper' is unknown"):
        caption_args(ctx, CaptionForm(folder="audio/songs", labeller="whisper"))
    with pytest.raises(AceStepError, match="No caption job is running"):
        cancel_job(ctx, CAPTION)
    assert [check_device(text) for text in ("auto", "", " CUDA ", "cuda:2", "cpu")] == [
        None, None, "cuda", "cuda:2", "cpu"]


def test_start_is_refused_and_cancel_works_while_a_job_runs(ctx, songs):
    assert progress_markdown(ctx, None) == "No caption job has run yet."
    sleeper = ctx.jobs.submit(CAPTION, [sys.executable, "-c", "import time; time.sleep(60)"], needs_gpu=False,
                              owner="bob")
    assert buttons(ctx, CAPTION) == (gr.update(interactive=False), gr.update(interactive=True))
    assert progress_markdown(ctx, sleeper) == f"Job **{sleeper.id}** (bob): **running**\n\nLoading..."
    with pytest.raises(AceStepError, match=f"Caption job {sleeper.id} is running"):
        start_caption(ctx, CaptionForm(folder="audio/songs", labeller="analysis"))
    assert cancel_job(ctx, CAPTION) == f"Job {sleeper.id}: stopping."
    assert ctx.jobs.wait(sleeper.id, timeout=30).status == "stopped"
    assert buttons(ctx, CAPTION) == (gr.update(interactive=True), gr.update(interactive=False))


def test_progress_is_read_from_the_commands_lines():
    step = parse_label_step(progress_event(
        f"[3/10] {'analysis':11s} {'failed':9s} /w/audio/My Song.wav  not audio: cannot decode   ETA 0:05"))
    assert (step.index, step.total, step.labeller, step.status, step.eta) == (3, 10, "analysis", "failed", "0:05")
    assert (step.file, step.detail) == ("My Song.wav", "not audio: cannot decode")
    step = parse_label_step(progress_event(
        f"[1/4] {'transcriber':11s} {'labelled':9s} /w/audio/a b.flac   ETA --:--"))
    assert (step.labeller, step.status, step.file, step.detail, step.eta) == (
        "transcriber", "labelled", "a b.flac", "", "--:--")
    assert parse_label_step({"type": "log", "step": 3}) is None


def test_the_summary_is_the_end_of_the_log():
    log = "\n".join(["[job] 2025-01-01 started (pid 1): python -m acestep.cli caption",
                     "[1/2] analysis    labelled  /a.wav   ETA 0:01",
                     "2 file(s): 1 labelled, 0 from the cache, 0 already labelled (skipped), 1 failed",
                     "  failed: /b.wav: not audio", "[job] 2025-01-01 done: exit 2"])
    assert summary_from_log(log, caption_tab.SUMMARY_START) == [
        "2 file(s): 1 labelled, 0 from the cache, 0 already labelled (skipped), 1 failed",
        "  failed: /b.wav: not audio"]
    assert summary_from_log("no summary here", caption_tab.SUMMARY_START) == []


def test_the_results_show_each_files_sidecar_and_its_problems(ctx, songs):
    for name in ("a.wav", "b.wav", "c.wav"):
        (songs / name).write_bytes(b"")
    (songs / "a.wav.json").write_text(json.dumps({"caption": "warm lo-fi\nbeat", "bpm": 92, "key": "a minor",
                                                  "labelled_by": {"captioner": "x"}, "unparsed": ["captioner"]}))
    (songs / "a.wav.txt").write_text("[Verse]\nhello\n")
    (songs / "b.wav.json").write_text("{not json")
    rows = {row[0]: row for row in result_rows(ctx, "audio/songs")}
    assert rows["a.wav"][:5] == ["a.wav", "warm lo-fi / beat", "", "92", "A minor"]
    assert rows["a.wav"][7] == "[Verse] / hello" and rows["a.wav"][9] == "captioner"
    assert "could not be parsed: captioner" in rows["a.wav"][10]
    assert "not valid JSON" in rows["b.wav"][10]
    assert rows["c.wav"] == ["c.wav"] + [""] * 9 + [NOT_LABELLED]


@pytest.mark.slow
def test_a_real_analysis_job_labels_every_song_with_bpm_and_key(ctx, songs, real_songs):
    for clip in real_songs:
        shutil.copy(clip, songs / clip.name)
    (songs / f"{real_songs[0].name}.json").write_text(json.dumps({"caption": "chiptune march"}))
    (songs / "broken.wav").write_text("this is not audio")
    form = CaptionForm(folder="audio/songs", labeller="analysis", write_csv=True, use_cache=False)
    job = start_caption(ctx, form, owner="ann")
    assert not job.needs_gpu
    job = ctx.jobs.wait(job.id, timeout=300)
    log = ctx.jobs.tail_log(job.id, 200)
    assert job.status == "done" and job.exit_code == 2, log  # broken.wav failed, the songs were labelled

    rows = {row[0]: row for row in result_rows(ctx, "audio/songs")}
    assert sorted(rows) == sorted([clip.name for clip in real_songs] + ["broken.wav"])
    for clip in real_songs:
        _, caption, _, bpm, key, *_, labelled_by, _ = rows[clip.name]
        assert 40 <= float(bpm) <= 250 and key.split()[1] in ("major", "minor"), rows[clip.name]
        assert labelled_by == "analysis"
    assert rows[real_songs[0].name][1] == "chiptune march"  # labels already there are kept
    assert rows["broken.wav"][3:5] == ["", ""] and rows["broken.wav"][-1] == NOT_LABELLED
    assert (songs / "labels.csv").read_text().startswith("file,caption")

    text = progress_markdown(ctx, job)
    assert f"Job **{job.id}** (ann): **done**, but some files failed" in text and "**3/3**" in text
    assert "3 file(s): 2 labelled, 0 from the cache" in text
    assert f"\n\n- failed: {markdown_text(str(songs / 'broken.wav'))}: " in text  # a list item: its reason wraps
    assert buttons(ctx, CAPTION) == (gr.update(interactive=True), gr.update(interactive=False))
