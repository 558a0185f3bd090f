"""The jobs as the tabs show them: a real CLI job submitted, its rows, progress and log."""

import numpy as np
import pytest
import soundfile

from acestep.ui.context import AppContext, Workspace
from acestep.ui.jobs_panel import (
    active_job, job_details, job_rows, markdown_text, progress_text, stop_job, submit_cli_job,
)


@pytest.fixture
def ctx(tmp_path):
    return AppContext.create(Workspace(tmp_path / "ws", tmp_path / "models"))


def test_a_cli_job_shows_its_progress_status_and_log(ctx):
    songs = ctx.workspace.audio / "long"
    songs.mkdir()
    for name in ("a", "b"):
        soundfile.write(songs / f"{name}.wav", np.zeros((48000 * 35, 2), dtype="float32") + 0.1, 48000)
    job = submit_cli_job(ctx, "split", ["split", songs, ctx.workspace.audio / "cut"], needs_gpu=False,
                         label="long songs", owner="ann")
    assert ctx.jobs.wait(job.id, timeout=120).status == "done"
    [row] = job_rows(ctx, ["split"])
    assert row[0] == job.id and row[1:4] == ["split", "long songs", "done"]
    assert row[4] == "2/2" and row[5] == "ann"
    details = job_details(ctx, job.id)
    assert f"**{job.id}** (split) **done**" in details and "[2/2]" in details
    assert sorted(p.name for p in (ctx.workspace.audio / "cut").iterdir()) == ["a_part01.wav", "b_part01.wav"]
    assert job_rows(ctx, ["train"]) == [] and active_job(ctx, "split") is None


def test_a_failing_job_keeps_its_error_line(ctx):
    job = submit_cli_job(ctx, "split", ["split", ctx.workspace.audio / "absent", ctx.workspace.outputs],
                         needs_gpu=False)
    finished = ctx.jobs.wait(job.id, timeout=120)
    assert finished.status == "failed" and "absent" in finished.message
    assert job_rows(ctx)[0][7] == finished.message


def test_progress_text_and_stop_of_a_finished_job(ctx):
    assert progress_text({"type": "progress", "index": 3, "total": 10}) == "3/10"
    assert progress_text({"type": "log", "step": 40}) == "step 40"
    assert progress_text(None) == ""
    job = submit_cli_job(ctx, "models", ["models", "--checkpoints-dir", ctx.workspace.checkpoints], False)
    ctx.jobs.wait(job.id, timeout=60)
    assert stop_job(ctx, job.id).endswith(": done.")  # stopping a finished job changes nothing


def test_friendly_turns_our_errors_into_page_messages_and_keeps_the_signature():
    import inspect

    import gradio as gr

    from acestep.errors import DatasetError
    from acestep.ui.jobs_panel import friendly

    def handler(path: str, progress: gr.Progress = None, request: gr.Request = None):
        raise DatasetError(f"{path}: broken")

    wrapped = friendly(handler)
    assert list(inspect.signature(wrapped).parameters) == ["path", "progress", "request"]
    with pytest.raises(gr.Error, match="x.json: broken"):
        wrapped("x.json")


def test_markdown_text_escapes_what_would_format_a_file_name():
    shown = markdown_text(r"C:\Music\my_song *live*.wav (take 2) <b>")
    assert shown == r"C:\\Music\\my\_song \*live\*.wav (take 2) \<b\>"
