"""One tick event for the parts that share a timer."""

import gradio as gr
import pytest

from acestep.ui.ticks import Ticks


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
