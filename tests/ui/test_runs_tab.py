"""The Runs tab: the history table from hand-written run folders (truncated and damaged event
lines, every ending), the status of a run's train job, the comparison plot's series, the config."""

import json
import sys
import time
from pathlib import Path

import gradio as gr
import pytest

from acestep.files import folder_bytes, size_text
from acestep.training.run_folders import RunFolderError, read_events, summarize_run
from acestep.ui.context import AppContext, Workspace
from acestep.ui.runs_tab import (
    RUN_COLOURS,
    build_runs_tab,
    plot_settings,
    plot_shows,
    run_colours,
    run_config_text,
    run_curves,
    run_details,
    run_rows,
)

T0 = 1_800_000_000.0


def write_run(runs: Path, name: str, events: list[dict], tail: str = "", adapter=("lora", 64)) -> Path:
    """A run folder as training writes it: config.toml and events.jsonl (plus raw `tail` text)."""
    folder = runs / name
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(f'version = 1\n\n[adapter]\ntype = "{adapter[0]}"\nrank = {adapter[1]}\n\n'
                                        f'[run]\nname = "{name}"\n', encoding="utf-8")
    lines = "".join(json.dumps(event) + "\n" for event in events)
    (folder / "events.jsonl").write_text(lines + tail, encoding="utf-8")
    return folder


def log(step, loss, epoch=0):
    return {"type": "log", "time": T0 + step, "step": step, "epoch": epoch, "loss": loss, "lr": 1e-4}


START = {"type": "start", "time": T0, "step": 0, "epoch": 0, "message": "run"}


@pytest.fixture
def ctx(tmp_path):
    return AppContext.create(Workspace(tmp_path / "ws", checkpoints=tmp_path / "checkpoints"))


@pytest.fixture
def runs(ctx):
    root = ctx.workspace.runs
    write_run(root, "finished", [START, log(1, 0.9), log(2, 0.7),
                                 {"type": "epoch", "time": T0 + 3, "step": 2, "epoch": 0, "loss": 0.8},
                                 {"type": "best", "time": T0 + 3, "step": 2, "epoch": 0, "loss": 0.8},
                                 log(3, 0.6, 1), log(4, 0.65, 1),
                                 {"type": "best", "time": T0 + 5, "step": 4, "epoch": 1, "loss": 0.62},
                                 {"type": "done", "time": T0 + 6, "step": 4, "epoch": 2, "loss": 0.65}])
    # still writing: the last line is cut in the middle, and a damaged line sits before it
    write_run(root, "writing", [START, log(1, 1.5), log(2, 1.25)],
              tail='not json\n[1, 2]\n{"type": "log", "step": 3, "lo', adapter=("lokr", 16))
    write_run(root, "stopped", [START, log(1, 2.0),
                                {"type": "stop", "time": T0 + 2, "step": 1, "epoch": 0, "message": "on request"}])
    write_run(root, "failed", [START, {"type": "error", "time": T0 + 1, "step": 0, "epoch": 0,
                                       "message": "TrainingError: out of memory"}])
    write_run(root, "validated", [START, log(1, 1.0), log(2, 0.9),
                                  {"type": "validation", "time": T0 + 3, "step": 2, "epoch": 0, "val_loss": 1.2},
                                  {"type": "validation", "time": T0 + 4, "step": 4, "epoch": 1, "val_loss": 1.1}])
    (root / "no-config").mkdir()  # not a run: no config.toml
    (root / "no-config" / "events.jsonl").write_text(json.dumps(START) + "\n")
    return root


def rows_by_name(ctx):
    return {row[0]: row for row in run_rows(ctx)}


def test_history_rows_status_steps_and_losses(ctx, runs):
    rows = rows_by_name(ctx)
    assert set(rows) == {"finished", "writing", "stopped", "failed", "validated"}  # no .jobs, no no-config
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(T0))
    size = size_text(folder_bytes(runs / "finished"))  # config.toml and events.jsonl: some 800 bytes
    assert rows["finished"][1:] == ["done", started, "4", "2", "0.6500", "0.6200 (epoch average)", "lora r64", "",
                                    size]
    assert size.endswith(" B") and int(size.split()[0]) > 500
    assert rows["writing"][1] == "incomplete" and rows["writing"][3] == "2" and rows["writing"][5] == "1.2500"
    assert rows["writing"][6] == "" and rows["writing"][7] == "lokr r16"
    assert rows["stopped"][1] == "stopped" and rows["stopped"][5] == "2.0000"
    assert rows["failed"][1] == "error" and rows["failed"][5] == ""
    assert rows["validated"][1] == "incomplete" and rows["validated"][6] == "1.1000 (validation)"


def test_events_reader_skips_truncated_and_damaged_lines(runs):
    events = read_events(runs / "writing" / "events.jsonl")
    assert [event["type"] for event in events] == ["start", "log", "log"]
    assert read_events(runs / "missing" / "events.jsonl") == []
    summary = summarize_run(runs / "failed")
    assert summary.status == "error" and summary.message == "TrainingError: out of memory"


def test_comparison_plot_has_one_series_per_run(ctx, runs):
    frame = run_curves(runs, ["finished", "writing", "nope", "../finished"])
    assert list(frame.columns) == ["step", "value", "run"]
    assert sorted(frame["run"].unique()) == ["finished", "writing"]
    assert frame[frame.run == "finished"]["value"].tolist() == [0.9, 0.7, 0.6, 0.65]
    assert frame[frame.run == "writing"]["step"].tolist() == [1, 2]
    validation = run_curves(runs, ["validated", "finished"], "validation loss")
    assert validation["run"].unique().tolist() == ["validated"] and validation["value"].tolist() == [1.2, 1.1]
    assert run_curves(runs, []).empty


def preview(step, effect=None, distance=None):
    return {"type": "preview", "time": T0 + step, "step": step, "epoch": 0, "files": [], "message": "previews",
            **({"effect_db": effect} if effect else {}), **({"songs_distance": distance} if distance else {})}


def test_what_the_previews_measured_is_in_the_table_and_the_curves(ctx):
    write_run(ctx.workspace.runs, "previewed", [START, log(1, 1.0), preview(1, {"0.5": 0.25, "1": 0.5},
                                                                            {"0": 1.2, "1": 1.1}),
                                                log(2, 0.9), preview(2, {"1": 1.5}, {"0": 1.2, "1": 0.9})])
    write_run(ctx.workspace.runs, "no-zero", [START, log(1, 1.0), preview(1, None, {"1": 0.9})])  # no strength 0
    write_run(ctx.workspace.runs, "farther", [START, preview(3, {"1": 0.1}, {"0": 1.0, "1": 1.2})])
    rows = rows_by_name(ctx)
    assert rows["previewed"][-2] == "1.50 dB, 25% closer"  # the last preview, at strength 1
    assert rows["no-zero"][-2] == "" and rows["farther"][-2] == "0.10 dB, 20% farther"
    summary = summarize_run(ctx.workspace.runs / "previewed")
    assert (summary.preview_step, summary.preview_effect_db) == (2, 1.5)
    assert summary.preview_closer == pytest.approx(0.25)
    effect = run_curves(ctx.workspace.runs, ["previewed", "farther"], "preview effect")
    assert effect.values.tolist() == [[1, 0.5, "previewed"], [2, 1.5, "previewed"], [3, 0.1, "farther"]]
    distance = run_curves(ctx.workspace.runs, ["previewed", "no-zero"], "preview distance to the songs")
    assert distance.values.tolist() == [[1, 1.1, "previewed"], [2, 0.9, "previewed"], [1, 0.9, "no-zero"]]
    settings = plot_settings(plot_value(effect), ["previewed", "farther"], "preview effect")
    assert settings.y_title == "adapter effect at strength 1 (dB)" and settings.value is None  # no points with them
    assert plot_settings(None, ["no-zero"], None).y_title == "loss"


def plot_value(frame):
    """The LinePlot's value as the page sends it back to a handler (what Gradio made of `frame`)."""
    return gr.LinePlot(x="step", y="value", color="run").postprocess(frame).model_dump()


def test_each_run_plotted_has_a_colour_of_its_own_by_its_place_among_those_chosen(ctx, runs):
    chosen = ["writing", "stopped", "finished"]
    curves = run_curves(runs, chosen)
    assert plot_settings(plot_value(curves), chosen, None).color_map == {
        "writing": RUN_COLOURS[0], "stopped": RUN_COLOURS[1], "finished": RUN_COLOURS[2]}
    # a run without points is not in the map (a colour for a run the plot lacks spoils its scale);
    # the others keep their colours, so the map changes exactly when the runs plotted do
    validation = run_curves(runs, ["finished", "validated"], "validation loss")
    assert plot_settings(plot_value(validation), ["finished", "validated"], "validation loss").color_map == {
        "validated": RUN_COLOURS[1]}
    assert plot_settings(plot_value(run_curves(runs, [])), [], None).color_map == {}
    many = [f"run-{index}" for index in range(12)]
    assert list(run_colours(many, many[::-1]).values())[:3] == [RUN_COLOURS[1], RUN_COLOURS[0], RUN_COLOURS[9]]


def test_a_refresh_leaves_the_plot_alone_while_its_points_are_unchanged(ctx, runs):
    curves = run_curves(runs, ["finished", "writing"])
    assert plot_shows(plot_value(curves), run_curves(runs, ["finished", "writing"]))
    assert not plot_shows(plot_value(curves), run_curves(runs, ["finished"]))
    assert not plot_shows(None, curves) and plot_shows(plot_value(run_curves(runs, [])), run_curves(runs, []))
    with (runs / "writing" / "events.jsonl").open("a") as events:  # the truncated line completed, and a new step
        events.write('ss": 1.0}\n' + json.dumps(log(4, 1.125)) + "\n")
    assert not plot_shows(plot_value(curves), run_curves(runs, ["finished", "writing"]))


def test_a_resumed_run_keeps_the_last_value_of_each_step(ctx):
    write_run(ctx.workspace.runs, "resumed", [START, log(1, 1.0), log(2, 0.9), log(3, 0.8), START,
                                              log(3, 0.85), log(4, 0.7),
                                              {"type": "done", "time": T0 + 9, "step": 4, "epoch": 1}])
    frame = run_curves(ctx.workspace.runs, ["resumed"])
    assert frame["step"].tolist() == [1, 2, 3, 4] and frame["value"].tolist() == [1.0, 0.9, 0.85, 0.7]
    assert rows_by_name(ctx)["resumed"][1] == "done"


def test_a_run_with_a_job_shows_the_jobs_status(ctx, runs):
    events = runs / "finished" / "events.jsonl"
    job = ctx.jobs.submit("train", [sys.executable, "-c", "raise SystemExit(3)"], needs_gpu=False,
                          events_path=events, label="finished", cwd=ctx.workspace.root)
    assert ctx.jobs.wait(job.id, timeout=60).status == "failed"
    assert rows_by_name(ctx)["finished"][1] == "failed"  # the job's word, over the events' "done"
    running = ctx.jobs.submit("train", [sys.executable, "-c", "import time; time.sleep(60)"], needs_gpu=False,
                              events_path=runs / "writing" / "events.jsonl", label="writing", cwd=ctx.workspace.root)
    try:
        assert rows_by_name(ctx)["writing"][1] == "running"
        assert f"Job: `{running.id}`" in run_details(ctx, "writing")
    finally:
        ctx.jobs.stop(running.id, force=True)
        assert ctx.jobs.wait(running.id, timeout=60).finished
    assert rows_by_name(ctx)["stopped"][1] == "stopped"  # no job: from its events


def test_config_of_the_selected_run(ctx, runs):
    assert 'type = "lokr"' in run_config_text(ctx, "writing")
    assert run_config_text(ctx, "") == ""
    for bad in ("nope", "../ws", ".jobs", "no-config"):
        with pytest.raises(RunFolderError):
            run_config_text(ctx, bad)


def test_tab_builds_with_its_element_ids(ctx, runs):
    with gr.Blocks() as app:
        build_runs_tab(ctx)
    ids = {block.elem_id for block in app.blocks.values()}
    assert {"runs-table", "runs-plot", "runs-config", "runs-refresh"} <= ids


def test_a_run_or_its_checkpoints_are_deleted_from_the_tab_after_the_browser_s_confirm(ctx, runs):
    from acestep.ui.runs_tab import delete_from_runs

    with gr.Blocks() as app:
        build_runs_tab(ctx)
    handlers = {}
    for fn in app.fns.values():
        for block_id, event in fn.targets:
            elem_id = getattr(app.blocks.get(block_id), "elem_id", None)
            if event == "click" and elem_id in ("runs-delete", "runs-delete-checkpoints"):
                assert "confirm(`Delete" in fn.js  # the browser asks first; its answer is the last input
                handlers[elem_id] = fn.fn
    for name in ("finished", "stopped"):
        (runs / name / "checkpoints" / "step-000004").mkdir(parents=True)
        (runs / name / "checkpoints" / "step-000004" / "COMPLETE").write_text("{}")
    nothing = (gr.skip(),) * 4  # the table, details, config and the box for an unfinished run, as they were
    assert handlers["runs-delete-checkpoints"]("finished", False, False) == nothing  # not confirmed: nothing
    assert (runs / "finished" / "checkpoints").is_dir()
    rows, details, config, forced = handlers["runs-delete-checkpoints"]("finished", False, True)
    assert not (runs / "finished" / "checkpoints").exists() and "**finished**: done" in details and forced is False
    # refused: a notice (gr.Warning; a Python warning outside a request) naming what the page has, and no
    # update, so the table is not covered by an error (an error would be raised as gr.Error)
    with pytest.warns(UserWarning, match="has not finished") as refusal:
        assert handlers["runs-delete-checkpoints"]("stopped", False, True) == gr.skip()  # one skip: every output
    assert str(refusal[0].message).endswith('or tick "Also for a run that has not finished" to delete them anyway.')
    assert "--force" not in str(refusal[0].message) and (runs / "stopped" / "checkpoints").is_dir()
    rows, details, config, forced = handlers["runs-delete-checkpoints"]("stopped", True, True)  # the box ticked
    assert not (runs / "stopped" / "checkpoints").exists() and "**stopped**: stopped" in details
    assert forced is False  # unticked again, for the next run
    running = ctx.jobs.submit("train", [sys.executable, "-c", "import time; time.sleep(60)"], needs_gpu=False,
                              events_path=runs / "writing" / "events.jsonl", label="writing", cwd=ctx.workspace.root)
    try:
        with pytest.raises(RunFolderError, match=f"Run writing is running as job {running.id}; stop it first"):
            delete_from_runs(ctx, "writing", "run")
        with pytest.warns(UserWarning, match="is running as job"):
            assert handlers["runs-delete"]("writing", False, True) == gr.skip()
    finally:
        ctx.jobs.stop(running.id, force=True)
        assert ctx.jobs.wait(running.id, timeout=60).finished
    rows, details, config, forced = handlers["runs-delete"]("writing", False, True)
    assert not (runs / "writing").exists() and "writing" not in [row[0] for row in rows]
    assert (details, config) == (run_details(ctx, ""), "")


def test_the_confirmation_of_a_forced_deletion_says_the_run_can_no_longer_be_resumed(ctx, runs):
    with gr.Blocks() as app:
        build_runs_tab(ctx)
    [script] = [fn.js for fn in app.fns.values() for block_id, event in fn.targets
                if getattr(app.blocks.get(block_id), "elem_id", None) == "runs-delete-checkpoints"]
    assert script.startswith("(name, forced, yes) => [name, forced, !!name && confirm(`")
    assert "${forced ? ', even if it has not finished' : ''}" in script and "can then no longer be resumed" in script
