"""One tick event for the parts that share a timer."""

import gradio as gr
import pytest

from acestep.ui.ticks import IDLE_POLL_SECONDS, POLL_SECONDS, Ticks


def test_the_parts_get_their_own_inputs_and_their_outputs_come_in_order():
    with gr.Blocks() as app:
        a, b, c, d, e = (gr.Textbox() for _ in range(5))
        ticks = Ticks(gr.Timer(1))
        ticks.add(lambda x, y: (f"{x}+{y}", gr.skip()), [a, b], [c, d])
        ticks.add(lambda x: x.upper(), [c], [e])  # one output: its value comes bare
        ticks.wire()
    assert ticks.run("1", "2", "three") == ["1+2", gr.skip(), "THREE"]
    [event] = [fn for fn in app.fns.values() if (ticks.timer._id, "tick") in fn.targets]
    assert [block._id for block in event.inputs] == [a._id, b._id, c._id]
    assert [block._id for block in event.outputs] == [c._id, d._id, e._id]


def test_two_parts_updating_one_component_are_refused():
    with gr.Blocks():
        a = gr.Textbox()
        ticks = Ticks(gr.Timer(1))
        ticks.add(lambda: "x", [], [a])
        ticks.add(lambda: "y", [], [a])
        with pytest.raises(ValueError, match="same component"):
            ticks.wire()


def test_the_pace_follows_the_jobs_and_is_sent_only_when_it_changes():
    jobs = []
    with gr.Blocks() as app:
        a = gr.Textbox()
        ticks = Ticks(gr.Timer(POLL_SECONDS), busy=lambda: bool(jobs))
        ticks.add(lambda: "table", [], [a])
        ticks.wire()
    [event] = [fn for fn in app.fns.values() if (ticks.timer._id, "tick") in fn.targets]
    assert [block._id for block in event.inputs] == [ticks.pace._id]  # the page's pace comes back each tick
    assert [block._id for block in event.outputs] == [a._id, ticks.timer._id, ticks.pace._id]
    assert event.concurrency_limit is None  # pages' ticks do not queue behind each other

    def pace(updates):  # the interval sent to the timer, or None when skipped; and the remembered pace
        timer, remembered = updates[-2:]
        return (timer.value if isinstance(timer, gr.Timer) else None), remembered

    assert ticks.pace.value == POLL_SECONDS  # a page loads at the quick pace: its first tick comes soon
    assert pace(ticks.run(POLL_SECONDS)) == (IDLE_POLL_SECONDS, IDLE_POLL_SECONDS)  # nothing runs: slow down
    assert pace(ticks.run(IDLE_POLL_SECONDS)) == (None, IDLE_POLL_SECONDS)  # already slow: nothing sent
    jobs.append("seen at a tick")
    assert pace(ticks.run(IDLE_POLL_SECONDS)) == (POLL_SECONDS, POLL_SECONDS)
    assert pace(ticks.run(POLL_SECONDS)) == (None, POLL_SECONDS)
    assert ticks.run(POLL_SECONDS)[0] == "table"
    timer, remembered = ticks.hurry()  # what a Start sends: the quick pace at once
    assert (timer.value, remembered) == (POLL_SECONDS, POLL_SECONDS)


def test_a_tab_may_tick_slower_than_the_quick_pace_while_busy():
    jobs = ["a training job"]
    with gr.Blocks():
        ticks = Ticks(gr.Timer(5.0), busy=lambda: bool(jobs), quick=5.0)  # the Runs tab redraws its curves
        ticks.add(lambda: "curves", [], [gr.Textbox()])
    assert ticks.run(5.0)[-2:] == [gr.skip(), 5.0]
    jobs.clear()
    timer, remembered = ticks.run(5.0)[-2:]
    assert (timer.value, remembered) == (IDLE_POLL_SECONDS, IDLE_POLL_SECONDS)
    timer, remembered = ticks.hurry()
    assert (timer.value, remembered) == (5.0, 5.0)


def test_ticks_without_a_pace_have_no_pace_outputs():
    with gr.Blocks():
        ticks = Ticks(gr.Timer(1))
        with pytest.raises(ValueError, match="busy"):
            ticks.pace_outputs  # noqa: B018
