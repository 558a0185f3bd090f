"""The Caption tab's Split long songs panel: the `split` command line its form builds, the values and
paths it refuses, one split job at a time, and a real split job whose segments keep their labels."""

from __future__ import annotations

import json
import shutil
import sys

import gradio as gr
import pytest

from acestep.errors import AceStepError
from acestep.ui import split_panel
from acestep.ui.caption_tab import CAPTION, result_rows
from acestep.ui.context import AppContext, PathRefused, Workspace
from acestep.ui.jobs_panel import buttons, cancel_job, markdown_text
from acestep.ui.split_panel import SPLIT, SplitForm, split_args, split_markdown, start_split


def test_the_split_form_becomes_the_split_command_line(ctx, songs, tmp_path):
    assert split_args(ctx, SplitForm(folder="audio/songs")) == [
        "split", str(songs), str(ctx.workspace.audio / "songs-split"), "--segment", "30", "--min-tail", "10"]
    assert split_args(ctx, SplitForm("audio/songs", "datasets/cut", 60, 2.5)) == [
        "split", str(songs), str(ctx.workspace.datasets / "cut"), "--segment", "60", "--min-tail", "2.5"]
    # A --data-root folder: the segments go beside it when they may, else into the workspace's audio/.
    data = tmp_path / "data"
    (data / "live").mkdir(parents=True)
    roomy = AppContext.create(Workspace(tmp_path / "ws2", tmp_path / "checkpoints", extra_roots=(data,)))
    assert split_args(roomy, SplitForm(str(data / "live")))[2] == str(data / "live-split")
    assert split_args(roomy, SplitForm(str(data)))[2] == str(roomy.workspace.audio / "data-split")


def test_bad_split_values_name_the_field_and_start_no_job(ctx, songs, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(PathRefused, match="output folder .* is outside the folders this app may use"):
        split_args(ctx, SplitForm("audio/songs", str(tmp_path / "elsewhere")))
    with pytest.raises(PathRefused, match="audio folder .* does not exist"):
        split_args(ctx, SplitForm("audio/missing"))
    with pytest.raises(AceStepError, match="output folder is the audio folder"):
        split_args(ctx, SplitForm("audio/songs", "audio/songs/"))
    (ctx.workspace.audio / "notes.txt").write_text("x")
    with pytest.raises(AceStepError, match="notes.txt is a file"):
        split_args(ctx, SplitForm("audio/songs", "audio/notes.txt"))
    with pytest.raises(AceStepError, match="Segment length 45 is not offered; choose one of 30, 60 s"):
        split_args(ctx, SplitForm("audio/songs", segment=45))
    with pytest.raises(AceStepError, match="Shortest last segment must be from 0 to 30 s"):
        split_args(ctx, SplitForm("audio/songs", min_tail=31))
    with pytest.raises(AceStepError, match="Shortest last segment must be a number"):
        split_args(ctx, SplitForm("audio/songs", min_tail=None))
    with pytest.raises(gr.Error, match="outside the folders"):
        split_panel.friendly(start_split)(ctx, SplitForm("audio/songs", str(tmp_path / "elsewhere")))
    assert ctx.jobs.list_jobs() == []
    assert split_markdown(ctx, None) == "No split has run yet."


def test_a_second_split_is_refused_while_one_runs_and_cancel_stops_it(ctx, songs):
    sleeper = ctx.jobs.submit(SPLIT, [sys.executable, "-c", "import time; time.sleep(60)"], needs_gpu=False,
                              owner="bob")
    assert buttons(ctx, SPLIT) == (gr.update(interactive=False), gr.update(interactive=True))
    assert split_markdown(ctx, sleeper) == f"Job **{sleeper.id}** (bob): **running**\n\nLooking for audio files..."
    with pytest.raises(AceStepError, match=f"Split job {sleeper.id} is running"):
        start_split(ctx, SplitForm("audio/songs"))
    assert buttons(ctx, CAPTION) == (gr.update(interactive=True), gr.update(interactive=False))  # labelling may start
    assert cancel_job(ctx, SPLIT) == f"Job {sleeper.id}: stopping."
    assert ctx.jobs.wait(sleeper.id, timeout=30).status == "stopped"


@pytest.mark.slow
def test_a_real_split_job_cuts_the_songs_keeps_their_labels_and_reports(ctx, songs, rendered_songs, real_songs):
    from acestep.dataset.sidecars import read_sidecars

    shutil.copy(rendered_songs[0], songs / "march.wav")  # 75.2 s: 30 + 30 + 15.2 s
    (songs / "march.wav.json").write_text(json.dumps({"caption": "chiptune march", "genre": "chiptune", "bpm": 120,
                                                      "lyrics": "[Verse]\nla la"}))
    shutil.copy(real_songs[1], songs / "clip.wav")  # 12 s: one segment
    (songs / "clip.wav.json").write_text('{"caption": ')  # broken: the segment is cut, without labels
    shutil.copy(real_songs[0], songs / "tiny.wav")  # 6 s: shorter than the 10 s shortest segment

    job = start_split(ctx, SplitForm("audio/songs"), owner="ann")
    assert not job.needs_gpu and job.label == "audio/songs -> audio/songs-split"
    job = ctx.jobs.wait(job.id, timeout=300)
    log = ctx.jobs.tail_log(job.id, 200)
    assert job.status == "done" and job.exit_code == 2, log  # tiny.wav failed, the others were cut

    out = ctx.workspace.audio / "songs-split"
    assert sorted(p.name for p in out.iterdir()) == [
        "clip_part01.wav", "march_part01.wav", "march_part01.wav.json", "march_part02.wav", "march_part02.wav.json",
        "march_part03.wav", "march_part03.wav.json"]
    assert read_sidecars(out / "march_part02.wav") == {"caption": "chiptune march", "genre": "chiptune", "bpm": 120}
    rows = {row[0]: row for row in result_rows(ctx, "audio/songs-split")}  # the table shows the segments' labels
    assert rows["march_part03.wav"][1:4] == ["chiptune march", "chiptune", "120"] and rows["march_part03.wav"][7] == ""

    text = split_markdown(ctx, job)
    assert f"Job **{job.id}** (ann): **done**, but some files failed" in text and "**3/3** tiny.wav" in text
    assert markdown_text(f"Split 2 of 3 file(s) into 4 segment(s) in {out}; 1 failed") in text
    assert "lyrics are not copied: a segment holds part of the song" in text
    assert f"- labels not copied for {markdown_text(str(songs / 'clip.wav'))}: " in text
    assert "captioner sidecar is not valid JSON" in text
    assert f"- failed: {markdown_text(str(songs / 'tiny.wav'))}: is 6.0 s long, shorter than the 10 s" in text
    assert buttons(ctx, SPLIT) == (gr.update(interactive=True), gr.update(interactive=False))
