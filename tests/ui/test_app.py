"""The web app: the Model tab's data, login, and no model code in the UI process."""

import http.cookiejar
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from acestep.ui.model_tab import checkpoint_rows, missing_models_text
from support import free_port


def test_model_tab_rows_show_variant_and_status(tiny_checkpoints, tmp_path):
    rows = checkpoint_rows(tiny_checkpoints)
    assert ["acestep-v15-turbo", "dit", "turbo", "ready"] in rows
    assert ["vae", "vae", "", "ready"] in rows


def test_missing_models_text_names_the_download_command(tiny_checkpoints, tmp_path):
    assert "Needed to train" not in missing_models_text(tiny_checkpoints)
    text = missing_models_text(tmp_path)
    assert f"acestep-trainer download acestep-v15-turbo vae Qwen3-Embedding-0.6B --checkpoints-dir {tmp_path}" in text


def test_ui_process_does_not_import_model_code():
    code = ("import sys, acestep.ui.app; "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_opening_a_tab_starts_its_timers_and_stops_the_others(tmp_path, tiny_checkpoints):
    """A tab left stays in the page, hidden: its timers must not go on polling (each tick costs
    the browser a pass over the whole page)."""
    import gradio as gr

    from acestep.ui.app import TABS, build_app, timers_in
    from acestep.ui.context import AppContext, Workspace

    app = build_app(AppContext.create(Workspace(tmp_path / "ws", checkpoints=tiny_checkpoints)))
    tabs = [block for block in app.blocks.values() if isinstance(block, gr.Tab)]
    everyone = {timer._id for timer in app.blocks.values() if isinstance(timer, gr.Timer)}
    assert [tab.label for tab in tabs] == [label for label, _, _ in TABS]
    owned = {tab.label: {timer._id for timer in timers_in(tab)} for tab in tabs}
    assert all(owned[label] for label in ("Caption", "Preprocess", "Train", "Listen", "Export & Merge", "Runs"))
    assert set().union(*owned.values()) == everyone
    for tab in tabs:
        [on_select] = [fn for fn in app.fns.values() if (tab._id, "select") in fn.targets]
        assert {block._id for block in on_select.outputs} == everyone
        active = {block._id for block, update in zip(on_select.outputs, on_select.fn(), strict=True)
                  if update.active}
        assert active == owned[tab.label], tab.label
    # each timer sends one event a tick, however many parts it drives (ticks.py: each event costs the page)
    for timer in everyone:
        assert sum((timer, "tick") in fn.targets for fn in app.fns.values()) == 1


def test_a_tab_timer_ticks_slowly_until_a_job_of_its_tab_runs_and_its_start_buttons_quicken_it(
        tmp_path, tiny_checkpoints):
    """ticks.py: an idle page ticks every IDLE_POLL_SECONDS; the tab's jobs, or a Start, bring back
    POLL_SECONDS (the Runs tab, which redraws its curves, 5 s while a training job runs or waits)."""
    import gradio as gr

    from acestep.ui.app import build_app, timers_in
    from acestep.ui.context import AppContext, Workspace
    from acestep.ui.ticks import Ticks

    ctx = AppContext.create(Workspace(tmp_path / "ws", checkpoints=tiny_checkpoints))
    app = build_app(ctx)
    kinds = {"Model": {"download"}, "Caption": {"caption", "split"}, "Preprocess": {"preprocess"}, "Train": {"train"},
             "Listen": {"preview"}, "Export & Merge": {"export", "merge"}, "Runs": {"train"}}
    starters = {"Model": 1, "Caption": 2, "Preprocess": 1, "Train": 2, "Listen": 1, "Export & Merge": 2, "Runs": 0}
    tabs = {tab.label: tab for tab in app.blocks.values() if isinstance(tab, gr.Tab)}
    paced = {}
    for label, tab in tabs.items():
        for timer in timers_in(tab):
            [tick] = [fn for fn in app.fns.values() if (timer._id, "tick") in fn.targets]
            ticks = getattr(tick.fn, "__self__", None)
            assert isinstance(ticks, Ticks) and ticks.pace is not None, label
            paced.setdefault(label, []).append(ticks)
    assert set(paced) == set(kinds)
    tab_ids = {tab._id for tab in tabs.values()}
    for label, count in starters.items():  # Start (Resume, Render, Merge, Download, Split) sends the quick pace
        timers = {ticks.timer._id for ticks in paced[label]}
        hurried = [fn for fn in app.fns.values() if timers & {block._id for block in fn.outputs}
                   and not any(event == "tick" or target in tab_ids for target, event in fn.targets)]
        assert len(hurried) == count, (label, [fn.name for fn in hurried])
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    for kind in sorted(set().union(*kinds.values())):
        job = ctx.jobs.submit(kind, sleeper, needs_gpu=False)
        try:
            busy = {label: [ticks.busy() for ticks in paced_ticks] for label, paced_ticks in paced.items()}
            assert busy == {label: [kind in kinds[label]] * len(paced[label]) for label in paced}, kind
        finally:
            ctx.jobs.stop(job.id, force=True)
            assert ctx.jobs.wait(job.id, timeout=60).finished
    assert not any(ticks.busy() for paced_ticks in paced.values() for ticks in paced_ticks)


def fetch(opener, url, data=None):
    try:
        with opener.open(url, data=data, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.mark.slow
def test_login_is_required_when_auth_is_set(tiny_checkpoints, tmp_path):
    from acestep.ui.app import launch_app

    port = free_port()
    app = launch_app(port=port, auth=[("ann", "secret")], checkpoints_dir=tiny_checkpoints,
                     workspace_dir=tmp_path / "workspace", block=False)
    try:
        base = f"http://127.0.0.1:{port}"
        anonymous = urllib.request.build_opener()
        assert fetch(anonymous, f"{base}/config")[0] == 401
        assert fetch(anonymous, f"{base}/login", b"username=ann&password=wrong")[0] == 400
        user = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        assert fetch(user, f"{base}/login", b"username=ann&password=secret")[0] == 200
        status, body = fetch(user, f"{base}/config")
        assert status == 200 and b"acestep-v15-turbo" in body  # the Model tab's table is in the page config
    finally:
        app.close()


def test_gpu_panel_without_a_gpu_says_so():
    from acestep.ui.model_tab import gpu_panel

    assert "no NVIDIA GPU" in gpu_panel()


def test_gpu_panel_shows_a_coloured_level_per_gpu(monkeypatch):
    from acestep.gpu import GpuProcess, GpuStatus, SystemGpuReport
    from acestep.ui import model_tab

    gib = 2**30
    gpus = (GpuStatus(0, "NVIDIA GeForce RTX 4090", 24 * gib, 4 * gib, 20 * gib, 10, 50, "ok", ()),
            GpuStatus(1, "NVIDIA GeForce RTX 3060", 8 * gib, 7 * gib, 1 * gib, 99, 80, "critical",
                      (GpuProcess(4242, "blender", 7 * gib),)))
    report = SystemGpuReport(gpus, "550.54", "12.4", "", "AMD EPYC", 16, 64 * gib, None)
    monkeypatch.setattr(model_tab, "read_gpus", lambda nvml=None: report)
    panel = model_tab.gpu_panel()
    assert '<span style="color:#2e7d32">&#9679;</span> **GPU 0** NVIDIA GeForce RTX 4090: 20.0 GiB free' in panel
    assert '<span style="color:#c62828">' in panel and "(critical)" in panel
    assert "blender" in panel and "4242" in panel


def test_downloads_run_as_jobs_and_offline_the_job_says_why(tmp_path, monkeypatch):
    from acestep.errors import JobError
    from acestep.ui.context import AppContext, Workspace
    from acestep.ui.model_tab import missing_models, start_download

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ctx = AppContext.create(Workspace(tmp_path / "ws", tmp_path / "models"))
    assert missing_models(ctx.workspace.checkpoints)[:3] == ["acestep-v15-turbo", "vae", "Qwen3-Embedding-0.6B"]
    with pytest.raises(JobError, match="Not an official model: gpt-5"):
        start_download(ctx, ["vae", "gpt-5"])
    with pytest.raises(JobError, match="Pick the models"):
        start_download(ctx, [])
    job = start_download(ctx, ["vae"], owner="ann")
    assert job.argv[-4:] == ["download", "vae", "--checkpoints-dir", str(ctx.workspace.checkpoints)]
    finished = ctx.jobs.wait(job.id, timeout=120)
    assert finished.status == "failed" and "vae" in finished.message
    assert "offline" in (finished.message + ctx.jobs.tail_log(job.id)).lower()
