"""The Runs tab in a real browser (Debian's chromium through Playwright), on run folders written by
hand: every run chosen for the comparison is drawn in its own colour, however it was added; a
refused deletion leaves the table usable; a run that has not finished loses its checkpoints only
when the box for it is ticked."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import pytest
from support import free_port, wait_for

from acestep.ui.context import AppContext, Workspace
from acestep.ui.runs_tab import build_runs_tab

from .conftest import NEEDS_CHROMIUM

T0 = 1_800_000_000.0

pytestmark = [pytest.mark.slow, NEEDS_CHROMIUM]

# [stroke, length of the path] of each line mark the Vega plot in #runs-plot draws; a line
# without a stroke colour (null) is drawn invisible
LINE_MARKS = ("() => Array.from(document.querySelectorAll('#runs-plot path[aria-roledescription=\"line mark\"]'))"
              ".map(e => [e.getAttribute('stroke'), (e.getAttribute('d') || '').length])")
AXIS_TITLES = ("() => Array.from(document.querySelectorAll('#runs-plot g.role-axis-title text'))"
               ".map(e => e.textContent)")
LEGEND = ("() => Array.from(document.querySelectorAll('#runs-plot g.role-legend-label text'))"
          ".map(e => e.textContent)")


def write_run(runs: Path, name: str, losses: list[float], ending: dict | None, checkpoints: bool = False) -> Path:
    """A run folder as training writes it: config.toml, events.jsonl (a log per step, then
    `ending`) and, with `checkpoints`, one complete step checkpoint."""
    folder = runs / name
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(f'version = 1\n\n[run]\nname = "{name}"\n', encoding="utf-8")
    events = [{"type": "start", "time": T0, "step": 0, "epoch": 0, "message": "run"}]
    events += [{"type": "log", "time": T0 + step, "step": step, "epoch": 0, "loss": loss, "lr": 1e-4}
               for step, loss in enumerate(losses, 1)]
    events += [ending] if ending else []
    (folder / "events.jsonl").write_text("".join(json.dumps(event) + "\n" for event in events), encoding="utf-8")
    if checkpoints:
        (folder / "checkpoints" / "step-000004").mkdir(parents=True)
        (folder / "checkpoints" / "step-000004" / "COMPLETE").write_text("{}")
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The Runs tab behind another tab (as in the app: built while hidden), on a free port; yields
    (base URL, AppContext). Runs: fresh (started, nothing logged yet), alpha and beta finished,
    long-run (the newest) stopped with a checkpoint."""
    root = tmp_path_factory.mktemp("runs-browser")
    ctx = AppContext.create(Workspace(root / "ws", checkpoints=root / "checkpoints"))
    write_run(ctx.workspace.runs, "fresh", [], None)
    write_run(ctx.workspace.runs, "alpha", [1.0, 0.8, 0.7, 0.6], {"type": "done", "time": T0 + 5, "step": 4,
                                                                  "epoch": 1, "message": "finished"})
    write_run(ctx.workspace.runs, "beta", [1.4, 1.1, 0.9, 0.85], {"type": "done", "time": T0 + 5, "step": 4,
                                                                  "epoch": 1, "message": "finished"})
    write_run(ctx.workspace.runs, "long-run", [2.0, 1.5, 1.2, 1.1], {"type": "stop", "time": T0 + 5, "step": 4,
                                                                     "epoch": 1, "message": "stopped on request"},
              checkpoints=True)
    with gr.Blocks() as app:
        with gr.Tab("Other"):
            gr.Markdown("Another tab, open when the page loads.")
        with gr.Tab("Runs"):
            build_runs_tab(ctx)
    port = free_port()
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}", ctx
    finally:
        app.close()


@pytest.fixture
def page(server, browser):
    """The page on the Runs tab; the test fails on any script error the page logged."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server[0])
    page.get_by_role("tab", name="Runs").click()
    page.locator("#runs-table").wait_for(timeout=60_000)
    yield page
    context.close()
    assert errors == []


def choose(page, names: list[str]) -> None:
    """Make `names` the runs to compare: remove the others, then add each in turn."""
    tokens = page.locator("#runs-compare .token")
    while unwanted := [token for token in tokens.all() if token.inner_text().strip() not in names]:
        unwanted[0].locator(".token-remove").click()
    missing = [name for name in names if name not in [token.inner_text().strip() for token in tokens.all()]]
    if missing:
        page.locator("#runs-compare input").click()  # the list stays open while runs are picked
        for name in missing:
            page.locator("ul[role=listbox] li", has_text=name).first.click(timeout=30_000)
        page.keyboard.press("Escape")
    wait_for(lambda: sorted(token.inner_text().strip() for token in tokens.all()) == sorted(names), 10,
             f"{names} chosen")


def drawn(page, count: int) -> list[list]:
    """Wait until the plot draws `count` line marks; [stroke, path length] of each."""
    page.wait_for_function(LINE_MARKS + f".length === {count}", timeout=30_000)
    page.wait_for_timeout(1000)  # the plot settles (a redraw after the data arrives)
    return page.evaluate(LINE_MARKS)


def test_every_run_chosen_is_drawn_in_its_own_colour(page, server):
    assert page.locator("#runs-compare").inner_text().count("long-run") == 1  # the newest run, picked at load
    [(first, length)] = drawn(page, 1)
    assert first not in (None, "null") and length > 0
    choose(page, ["long-run", "alpha"])  # a run added to the one shown
    lines = drawn(page, 2)
    assert all(stroke not in (None, "null") for stroke, _ in lines), lines
    assert len({stroke for stroke, _ in lines}) == 2, lines
    assert sorted(page.evaluate(LEGEND)) == ["alpha", "long-run"]
    choose(page, [])  # nothing to plot: no line, and no script error (the page fixture checks)
    drawn(page, 0)
    choose(page, ["beta", "long-run", "alpha"])  # from an empty plot, three at once
    lines = drawn(page, 3)
    assert len({stroke for stroke, _ in lines} - {None, "null"}) == 3, lines
    assert sorted(page.evaluate(LEGEND)) == ["alpha", "beta", "long-run"]
    page.locator("#runs-metric label", has_text="preview effect").click()  # no run has one: an empty plot
    page.wait_for_function(AXIS_TITLES + ".includes('adapter effect at strength 1 (dB)')", timeout=30_000)
    drawn(page, 0)
    page.locator("#runs-metric label", has_text="training loss").click()
    assert drawn(page, 3) == lines and "loss" in page.evaluate(AXIS_TITLES)

    choose(page, ["alpha", "fresh"])  # fresh has no points yet: one line
    drawn(page, 1)
    with (server[1].workspace.runs / "fresh" / "events.jsonl").open("a") as events:  # it logs its first steps
        events.writelines(json.dumps({"type": "log", "time": T0 + step, "step": step, "epoch": 0, "loss": 1.5,
                                      "lr": 1e-4}) + "\n" for step in (1, 2, 3))
    page.locator("#runs-refresh").click()  # (or the next tick)
    lines = drawn(page, 2)
    assert len({stroke for stroke, _ in lines} - {None, "null"}) == 2, lines
    assert sorted(page.evaluate(LEGEND)) == ["alpha", "fresh"]


def test_a_refused_deletion_leaves_the_table_usable_and_the_box_forces_it(page, server):
    _, ctx = server
    checkpoints = ctx.workspace.runs / "long-run" / "checkpoints"
    page.locator("#runs-table [role=gridcell]", has_text="long-run").first.click()
    page.locator("#runs-details", has_text="long-run").wait_for(timeout=30_000)
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#runs-delete-checkpoints").click()
    toast = page.locator(".toast-body", has_text="has not finished")
    toast.wait_for(timeout=30_000)
    refusal = toast.inner_text()
    assert checkpoints.is_dir()
    page.wait_for_timeout(1000)
    assert page.locator("#runs-table [data-testid=status-tracker]:not(.hide)").count() == 0  # nothing over the cells
    page.locator("#runs-table [role=gridcell]", has_text="alpha").first.click(timeout=10_000)  # the table still answers
    page.locator("#runs-details", has_text="alpha").wait_for(timeout=30_000)
    assert "--force" not in refusal and 'tick "Also for a run that has not finished"' in refusal  # what the page has

    page.locator("#runs-table [role=gridcell]", has_text="long-run").first.click(timeout=10_000)
    page.locator("#runs-details", has_text="long-run").wait_for(timeout=30_000)
    page.locator("#runs-delete-force input").check()
    questions = []
    page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.accept()))
    page.locator("#runs-delete-checkpoints").click()
    wait_for(lambda: not checkpoints.exists(), 30, f"{checkpoints} deleted from the Runs tab")
    assert "no longer be resumed" in questions[0] and "not finished" in questions[0]
    page.locator(".toast-body", has_text="Deleted the checkpoints of run long-run").wait_for(timeout=30_000)
    assert not page.locator("#runs-delete-force input").is_checked()  # unticked again for the next run
