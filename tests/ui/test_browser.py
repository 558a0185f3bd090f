"""The web app in a real browser (Debian's chromium through Playwright): login, the whole demo
flow (scan -> preprocess -> train -> export) through the page, a second browser seeing the same
job, and everything refused without a login or outside the app's folders.

Screenshots of every tab go to $ACESTEP_TEST_ARTIFACTS (default: <repo>/test-artifacts/).
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support import ARTIFACTS, free_port, wait_for

from .conftest import NEEDS_CHROMIUM

USER, PASSWORD = "ann", "secret-pw"
TABS = ("model", "caption", "dataset", "preprocess", "train", "listen", "export", "runs")
JOB_SECONDS = 240_000  # ms a real job may take on a slow CI machine

pytestmark = [pytest.mark.slow, NEEDS_CHROMIUM]



@pytest.fixture(scope="module")
def server(tmp_path_factory, made):
    """The demo app with a login, on a free port; yields (base URL, AppContext). Its workspace
    starts with a copy of the demo's models and songs (prepare_demo keeps them and writes the
    dataset), so they are not made twice in a test run."""
    from acestep.ui.app import build_app, create_context, serving_options

    root = tmp_path_factory.mktemp("browser")
    template = made[0]
    shutil.copytree(template.checkpoints, root / "demo" / "checkpoints")
    shutil.copytree(template.audio, root / "demo" / "audio")
    ctx = create_context(root / "demo", root / "unused", demo=True, progress=lambda *a, **k: None)
    (ctx.workspace.root / "inside.txt").write_text("inside the workspace\n")
    app = build_app(ctx)
    port = free_port()
    app.queue().launch(server_name="127.0.0.1", server_port=port, auth=[(USER, PASSWORD)], prevent_thread_lock=True,
                       quiet=True, **serving_options(ctx))
    try:
        yield f"http://127.0.0.1:{port}", ctx
    finally:
        app.close()
        for job in ctx.jobs.list_jobs():
            if not job.finished:
                ctx.jobs.stop(job.id, timeout=5)


def logged_in_page(browser, base):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(base)
    page.locator("input[type=text]").first.fill(USER)
    page.locator("input[type=password]").fill(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_selector("#tab-model-button, button[role=tab]", timeout=60_000)
    return page


def pick(page, elem_id: str, choice: str) -> None:
    """Open the dropdown `elem_id` and choose `choice` from its list."""
    page.locator(f"#{elem_id} input").click()
    page.locator("ul[role=listbox] li", has_text=choice).first.click(timeout=30_000)
    assert page.locator(f"#{elem_id} input").input_value() == choice


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def fill(page, elem_id: str, text: str) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(text)
    box.press("Enter") if box.evaluate("e => e.tagName") == "INPUT" else box.blur()


def screenshot(page, name: str) -> None:
    """The whole page, without the notices that fade by themselves (they would cover the top)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True, style=".toast-wrap { display: none; }")


def fetch(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, data=data, timeout=20) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


# --- refused without a login, or outside the roots ----------------------------------------------

def test_without_a_login_pages_api_and_files_are_refused(server):
    base, ctx = server
    inside = ctx.workspace.root / "inside.txt"
    status, body = fetch(f"{base}/")
    assert status == 200 and b'"auth_required":true' in body  # the login page, and nothing of the app:
    assert b"dataset-table" not in body and str(ctx.workspace.root).encode() not in body
    assert b'"named_endpoints":{}' in body or b"named_endpoints" not in body  # no API endpoint is described
    for path in ("/config", "/gradio_api/info", "/gradio_api/queue/status", f"/gradio_api/file={inside}"):
        status, body = fetch(base + path)
        assert status == 401, (path, status)
        assert b"inside the workspace" not in body
    assert fetch(f"{base}/file={inside}")[0] == 401  # not even a route that does not exist answers
    status, _ = fetch(f"{base}/gradio_api/queue/join", b'{"fn_index": 0, "data": [], "session_hash": "x"}')
    assert status == 401


def test_with_a_login_files_inside_the_roots_are_served_and_others_refused(server, browser):
    base, ctx = server
    page = logged_in_page(browser, base)
    request = page.context.request
    inside = request.get(f"{base}/gradio_api/file={ctx.workspace.root / 'inside.txt'}")
    assert inside.status == 200 and inside.text() == "inside the workspace\n"
    for outside in ("/etc/passwd", str(Path(__file__).resolve())):
        response = request.get(f"{base}/gradio_api/file={outside}")
        assert response.status in (403, 404), outside
    page.context.close()


def test_a_path_typed_outside_the_roots_is_refused_in_the_page(server, browser):
    base, _ = server
    page = logged_in_page(browser, base)
    open_tab(page, "Dataset")
    fill(page, "dataset-folder", "/etc")
    page.locator("#dataset-scan").click()
    toast = page.locator(".toast-body").first
    toast.wait_for(timeout=30_000)
    assert "outside the folders this app may use" in toast.inner_text()
    page.context.close()


# --- refusals and lists that are read again -----------------------------------------------------

def table_cell(page, elem_id: str, row: int, column: int):
    """A cell of the Dataframe `elem_id`, counted from 0 (header left out)."""
    return page.locator(f'#{elem_id} [role=gridcell][data-row="{row}"][data-col="{column}"]')


def test_a_refused_dataset_action_leaves_the_table_shown_clickable_and_edited(server, browser):
    base, ctx = server
    taken = ctx.workspace.datasets / "taken.json"
    taken.write_text("{}")
    page = logged_in_page(browser, base)
    try:
        open_tab(page, "Dataset")
        page.locator("#dataset-load").click()  # the demo's dataset
        wait_text(page, "dataset-status", r"4 sample\(s\)", 60_000)
        # Refused: a warning. As a gr.Error it laid Gradio's error box over the table, which took the clicks.
        page.locator("#dataset-apply").click()
        page.locator(".toast-body", has_text="Pick a sample in the table first").wait_for(timeout=30_000)
        table_cell(page, "dataset-table", 1, 1).click(timeout=10_000)
        wait_text(page, "dataset-sample", r"Sample 2: ", 30_000)
        fill(page, "dataset-caption", "edited in the browser")
        page.locator("#dataset-apply").click()
        wait_text(page, "dataset-message", r"Sample 2 updated", 30_000)
        # Save over another file without Overwrite: refused, the edit still shown and unsaved
        fill(page, "dataset-save-path", "datasets/taken.json")
        page.locator("#dataset-save").click()
        page.locator(".toast-body", has_text="already exists").wait_for(timeout=30_000)
        assert taken.read_text() == "{}"
        assert "unsaved changes" in page.locator("#dataset-status").inner_text()
        assert table_cell(page, "dataset-table", 1, 2).inner_text() == "edited in the browser"
        table_cell(page, "dataset-table", 0, 1).click(timeout=10_000)
        wait_text(page, "dataset-sample", r"Sample 1: ", 30_000)
    finally:
        page.context.close()
        taken.unlink()


def test_a_dataset_saved_after_the_page_loaded_is_offered_and_enter_keeps_the_chosen_one(server, browser):
    base, ctx = server
    added = ctx.workspace.datasets / "a-copy.json"  # sorted, it would come before demo.json
    shutil.copy(ctx.workspace.datasets / "demo.json", added)
    page = logged_in_page(browser, base)
    try:
        open_tab(page, "Preprocess")
        dataset = page.locator("#preprocess-dataset input")
        out = page.locator("#preprocess-out textarea, #preprocess-out input").first
        assert dataset.input_value() == "datasets/demo.json"
        out_before = out.input_value()
        dataset.click()  # the list is read again as it opens
        page.locator("ul[role=listbox] li", has_text="datasets/a-copy.json").wait_for(timeout=30_000)
        # the tick stays on the chosen dataset (it went to the new one, at the chosen one's old place)
        assert "datasets/demo.json" in page.locator("ul[role=listbox] li[aria-selected=true]").inner_text()
        page.keyboard.press("Enter")
        page.wait_for_timeout(1500)
        assert dataset.input_value() == "datasets/demo.json" and out.input_value() == out_before
    finally:
        page.context.close()
        added.unlink()


# --- the demo flow ----------------------------------------------------------------------------

def test_every_tab_renders_and_is_photographed(server, browser):
    base, _ = server
    page = logged_in_page(browser, base)
    assert page.locator("#demo-banner").is_visible()
    labels = {"model": "Model", "caption": "Caption", "dataset": "Dataset", "preprocess": "Preprocess",
              "train": "Train", "listen": "Listen", "export": "Export & Merge", "runs": "Runs"}
    for tab in TABS:
        open_tab(page, labels[tab])
        page.wait_for_timeout(1500)
        screenshot(page, f"tab-{tab}")
    page.context.close()


def test_a_model_added_while_the_app_runs_is_listed_at_the_next_page_load(server, browser):
    base, ctx = server
    added = ctx.workspace.checkpoints / "vae-copy"  # as a download or a merge would add it
    shutil.copytree(ctx.workspace.checkpoints / "vae", added)
    try:
        page = logged_in_page(browser, base)
        open_tab(page, "Model")
        wait_text(page, "checkpoints-table", r"vae-copy", 30_000)
        page.context.close()
    finally:
        shutil.rmtree(added)


def wait_text(page, elem_id: str, pattern: str, timeout: int = JOB_SECONDS) -> str:
    """Wait until the element's text matches the regular expression; its text. On a timeout the
    page is photographed (failure-<elem_id>.png) before the error propagates."""
    script = f"() => new RegExp({pattern!r}).test((document.querySelector('#{elem_id}') || {{}}).innerText || '')"
    try:
        page.wait_for_function(script, timeout=timeout)
    except Exception:
        screenshot(page, f"failure-{elem_id}")
        raise
    return page.locator(f"#{elem_id}").inner_text()


def test_demo_flow_scan_preprocess_train_export_with_a_second_browser(server, browser):
    base, ctx = server
    page = logged_in_page(browser, base)

    # Dataset: scan the demo songs (the folder is pre-selected) with a trigger tag and save the dataset
    open_tab(page, "Dataset")
    fill(page, "dataset-trigger", "browser-style")
    page.locator("#dataset-scan").click()
    wait_text(page, "dataset-status", r"4 sample\(s\)", 60_000)
    fill(page, "dataset-save-path", "datasets/browser.json")
    page.locator("#dataset-save").click()
    wait_text(page, "dataset-message", r"Saved 4 sample", 30_000)
    assert (ctx.workspace.datasets / "browser.json").is_file()
    assert page.locator("#dataset-choice input").input_value() == "datasets/browser.json"  # listed and chosen
    screenshot(page, "flow-1-dataset")

    # Preprocess it on the CPU with the tiny models
    open_tab(page, "Preprocess")
    pick(page, "preprocess-dataset", "datasets/browser.json")  # saved after the page loaded: listed when opened
    # the pick sets Output to the dataset's folder: wait for it, or it may land in the middle of the typing below
    out = page.locator("#preprocess-out textarea, #preprocess-out input").first
    wait_for(lambda: out.input_value() == "tensors/browser", 30, "Output to follow the dataset picked")
    fill(page, "preprocess-out", str(ctx.workspace.tensors / "browser"))
    fill(page, "preprocess-max-duration", "2")  # the first 2 s of each song: the tiny VAE takes ~1 s a second
    page.locator("#preprocess-start").click()
    summary = wait_text(page, "preprocess-summary", r"Job \S+ done")
    manifest_path = ctx.workspace.tensors / "browser" / "manifest.json"
    # the job is done, so its manifest (written first) is there; if not, say which jobs ran
    wait_for(manifest_path.is_file, 10, f"{manifest_path} after {summary!r}; jobs: "
             f"{[(job.id, job.status, job.message, job.argv) for job in ctx.jobs.list_jobs()]}")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["settings"]["max_duration"] == 2, manifest["settings"]
    screenshot(page, "flow-2-preprocess")

    # Train: long enough that a second browser finds it running
    open_tab(page, "Train")
    pick(page, "train-tensors", "tensors/browser")  # preprocessed after the page loaded: listed when opened
    fill(page, "train-run-name", "browser-run")
    fill(page, "train-run-epochs", "500")
    page.locator("#train-start").click()
    wait_text(page, "train-status", r"browser-run.*running")

    second = logged_in_page(browser, base)
    open_tab(second, "Train")
    wait_text(second, "train-status", r"browser-run.*by ann: running", 60_000)
    wait_text(second, "train-progress", r"Step [1-9]")
    second.wait_for_timeout(3000)
    screenshot(second, "flow-3-train-second-browser")
    assert plotted_points(second, "train-loss-plot") > 0 and plotted_points(second, "train-grad-norm-plot") > 0
    second.locator("#train-stop").click()  # the other browser stops it: it saves and ends
    wait_text(page, "train-status", r"No training job is running")
    [job] = [job for job in ctx.jobs.list_jobs() if job.kind == "train"]
    assert job.status == "stopped" and job.owner == USER
    screenshot(page, "flow-4-train-stopped")
    second.context.close()

    # A page opened now shows the run's log at its newest lines (it opened at the oldest)
    third = logged_in_page(browser, base)
    open_tab(third, "Train")
    wait_text(third, "train-progress", r"stopped")
    third.wait_for_timeout(2000)
    height, top, shown = third.evaluate(
        "() => { const t = document.querySelector('#train-log textarea'); "
        "return [t.scrollHeight, t.scrollTop, t.clientHeight]; }")
    assert height > shown and height - top - shown < 5, (height, top, shown)
    third.context.close()

    # Export the adapter the stop saved
    open_tab(page, "Export & Merge")
    page.locator("#export-refresh").click()
    fill(page, "export-run", "browser-run")
    page.wait_for_timeout(1000)
    page.locator("#export-start").click()
    wait_text(page, "export-files", r"safetensors")
    screenshot(page, "flow-5-export")
    exported = list((ctx.workspace.outputs).rglob("*.safetensors"))
    assert exported and "browser-run" in str(exported[0])

    # Listen: the caption starts from the run's trigger tag; render the adapter and hear it in the page
    open_tab(page, "Listen")
    page.locator("#listen-refresh").click()
    fill(page, "listen-run", "browser-run")
    page.wait_for_function("() => document.querySelector('#listen-caption textarea').value === 'browser-style'",
                           timeout=30_000)
    fill(page, "listen-caption", "browser-style, lofi piano")
    fill(page, "listen-duration", "2")
    page.locator("#listen-render").click()
    wait_text(page, "listen-status", r"done · browser-run")
    page.locator("#listen-audio-1").wait_for(state="visible", timeout=60_000)  # base model, then the adapter
    page.locator("#listen-image-1 img").wait_for(state="visible", timeout=30_000)
    wait_text(page, "listen-description", r"lofi piano · instrumental · 2 s", 30_000)
    # what the render measured: the adapter effect, and the distance to the songs the run trained on
    wait_text(page, "listen-description", r"Adapter effect: strength 1: \d+\.\d\d dB from the base model", 30_000)
    wait_text(page, "listen-description",
              r"songs .*: strength 0: \d\.\d{3}, strength 1: \d\.\d{3} \(\d+% (closer|farther)", 30_000)
    screenshot(page, "flow-6-listen")
    assert list((ctx.workspace.outputs / "listen").glob("browser-run-*/strength-1.wav"))

    # Runs: the run is in the history, stopped, with its losses
    open_tab(page, "Runs")
    page.locator("#runs-refresh").click()
    wait_text(page, "runs-table", r"browser-run[\s\S]*stopped", 30_000)
    page.wait_for_function(DRAWN_LINES.replace("ELEM", "runs-plot") + " > 0", timeout=30_000)
    screenshot(page, "flow-7-runs")

    # Delete: the browser asks first; a stopped run keeps the checkpoints it resumes from; the run goes
    run_dir = ctx.workspace.runs / "browser-run"
    pick(page, "runs-selected", "browser-run")
    wait_text(page, "runs-details", r"browser-run\*?\*?: stopped")
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.locator("#runs-delete").click()
    page.wait_for_timeout(2000)
    assert run_dir.is_dir()  # not confirmed: kept
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#runs-delete-checkpoints").click()
    page.locator(".toast-body", has_text="has not finished").wait_for(timeout=30_000)
    assert list((run_dir / "checkpoints").iterdir())
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#runs-delete").click()
    wait_for(lambda: not run_dir.exists(), 30, f"{run_dir} deleted from the Runs tab")
    wait_text(page, "runs-details", r"Pick a run")
    page.context.close()


# How many line marks the Vega plot in #ELEM draws with a colour (an empty plot has none; a line
# without a stroke colour is invisible, which Gradio does to some plots coloured by a column).
DRAWN_LINES = ("Array.from(document.querySelectorAll('#ELEM path[aria-roledescription=\"line mark\"]'))"
               ".filter(e => e.getAttribute('stroke') && e.getAttribute('stroke') !== 'null').length")


def plotted_points(page, elem_id: str) -> int:
    """The line marks drawn, with a colour, in the plot `elem_id`."""
    return page.evaluate("() => " + DRAWN_LINES.replace("ELEM", elem_id))
