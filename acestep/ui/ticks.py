"""Handlers that share one timer, sent to the page as one tick event, at a pace that follows the jobs.

Each event a page receives costs its browser a pass over the whole page, whatever the event carries:
on the Export tab each of its three tick events every 2 s cost about 0.13 of a core of Chromium,
even with every output skipped. A tab whose timer drives several parts (the jobs table, the adapter
picker, the results) adds them here and wires them once, as one event.

The pace: while a job the tab shows runs or waits (`busy`), the timer ticks every POLL_SECONDS
(a tab may ask for a slower `quick` pace: the Runs tab, which redraws its curves at each tick);
while none does, every IDLE_POLL_SECONDS (measured on the Train tab: an idle tab at a 2 s tick cost
headless Chromium 0.22 of a core, at 10 s 0.11, a bare Gradio page's own cost). A handler that
starts a job sends `hurry()` to `pace_outputs`, so its progress shows at the quick pace at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import gradio as gr

POLL_SECONDS = 2.0
IDLE_POLL_SECONDS = 10.0


@dataclass
class TickPart:
    handler: Callable  # called with the values of `inputs`; returns one value per output (bare when one)
    inputs: list
    outputs: list


@dataclass
class Ticks:
    """The parts `timer` runs at each tick; `wire()` registers them as one event. With `busy`
    (whether a job the tab shows runs or waits) the tick also sets the timer's pace, `quick` while
    busy, else IDLE_POLL_SECONDS, which a per-page state remembers so that an unchanged pace is not
    sent again."""
    timer: gr.Timer
    busy: Callable[[], bool] | None = None
    quick: float = POLL_SECONDS
    parts: list[TickPart] = field(default_factory=list)
    pace: gr.State | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.busy is not None:
            self.pace = gr.State(self.timer.value)  # the interval this page's timer ticks at

    def add(self, handler: Callable, inputs: Sequence, outputs: Sequence) -> None:
        self.parts.append(TickPart(handler, list(inputs), list(outputs)))

    @property
    def pace_outputs(self) -> list:
        """The outputs `hurry()` fills: the timer and the page's pace."""
        if self.pace is None:
            raise ValueError("these ticks have no pace: give Ticks a `busy` function")
        return [self.timer, self.pace]

    def hurry(self) -> tuple[gr.Timer, float]:
        """For `pace_outputs`, from a handler that has just started or queued a job."""
        return gr.Timer(self.quick), self.quick

    def run(self, *values) -> list:
        """Every part's handler on its slice of `values`; their outputs in order; then, with a pace,
        the timer's update (skipped when the page already ticks at it) and the new pace."""
        updates, start = [], 0
        for part in self.parts:
            result = part.handler(*values[start:start + len(part.inputs)])
            start += len(part.inputs)
            updates += list(result) if len(part.outputs) > 1 else [result]
        if self.pace is not None:
            interval = self.quick if self.busy() else IDLE_POLL_SECONDS
            updates += [gr.skip() if values[start] == interval else gr.Timer(interval), interval]
        return updates

    def wire(self) -> None:
        """Register the tick. Several pages' ticks run side by side (`concurrency_limit=None`): a tick
        only reads the jobs and the files, and one page's tick need not wait for another's."""
        inputs = [component for part in self.parts for component in part.inputs]
        outputs = [component for part in self.parts for component in part.outputs]
        if self.pace is not None:
            inputs, outputs = [*inputs, self.pace], [*outputs, *self.pace_outputs]
        if len(set(map(id, outputs))) != len(outputs):
            raise ValueError("two parts of one tick update the same component")
        self.timer.tick(self.run, inputs=inputs, outputs=outputs, concurrency_limit=None)
