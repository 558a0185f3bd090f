"""The run and adapter picker the Listen and Export & Merge tabs share: what it offers, and what
its timer refreshes (everything at the page's first tick, then only the list of runs)."""

import os

import gradio as gr
import pytest

from acestep.ui.adapter_picker import (
    NO_ADAPTER,
    adapter_info,
    build_adapter_picker,
    checkpoint_choices,
    default_checkpoint,
    refreshed_choices,
    run_choices,
)
from acestep.ui.context import AppContext, Workspace
from acestep.ui.ticks import Ticks

from .conftest import write_run


@pytest.fixture
def ctx(tmp_path):
    context = AppContext.create(Workspace(tmp_path / "ws", checkpoints=tmp_path / "checkpoints"))
    os.utime(write_run(context.workspace.runs, "older"), (1, 1))
    write_run(context.workspace.runs, "song")
    (context.workspace.runs / "empty").mkdir()  # no adapter yet: not offered
    return context


def test_choices_info_and_refresh(ctx):
    assert run_choices(ctx) == ["song", "older"]
    choices = checkpoint_choices(ctx, "song")
    assert [name for _, name in choices] == ["final", "best", "checkpoints/step-000020", "checkpoints/step-000010"]
    assert default_checkpoint(choices) == "final" and default_checkpoint(choices[1:]) == "best"
    assert adapter_info(ctx, "song", "best").startswith("**lora** · rank 8 · step 20 · trigger tag mystyle")
    assert adapter_info(ctx, "", "") == NO_ADAPTER
    # a run gone: the newest run; an adapter it does not have: its final/
    assert refreshed_choices(ctx, "gone", "checkpoints/step-000099")[1:] == ("song", choices, "final")
    assert refreshed_choices(ctx, "older", "best")[1::2] == ("older", "best")  # kept when still there


def tick_of(ctx, outputs: int):
    """The picker's timer handler, wired with `outputs` extra outputs that follow a pick."""
    with gr.Blocks():
        picker = build_adapter_picker(ctx, "pick")
        extras = [gr.Textbox() for _ in range(outputs)]
        ticks = Ticks(gr.Timer(1))
        picker.wire(ctx, extras, lambda run, checkpoint: tuple(f"{run}/{checkpoint}" for _ in extras), ticks)
    [part] = ticks.parts
    return part.handler


def test_the_first_tick_refreshes_everything_and_later_ones_only_add_runs(ctx):
    tick = tick_of(ctx, 1)
    known, runs, checkpoints, info, extra = tick(None, "older", "checkpoints/step-000010")  # the page's first tick
    assert known == ["song", "older"] and runs.value == "older" and checkpoints.value == "checkpoints/step-000010"
    assert info.startswith("**lora**") and extra == "older/checkpoints/step-000010"
    assert all(update == gr.skip() for update in tick(known, "older", "final"))  # nothing new: nothing changes
    write_run(ctx.workspace.runs, "newest")
    known, runs, *rest = tick(known, "older", "final")
    assert known == ["newest", "song", "older"] and runs.value == "older" and runs.choices == [
        ("newest", "newest"), ("song", "song"), ("older", "older")]
    assert all(update == gr.skip() for update in rest)  # the adapter and the form are left as they are
