"""Handlers that share one timer, sent to the page as one tick event.

Each event a page receives costs its browser a pass over the whole page, whatever the event carries:
on the Export tab each of its three tick events every 2 s cost about 0.13 of a core of Chromium,
even with every output skipped. A tab whose timer drives several parts (the jobs table, the adapter
picker, the results) adds them here and wires them once, as one event.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import gradio as gr


@dataclass
class TickPart:
    handler: Callable  # called with the values of `inputs`; returns one value per output (bare when one)
    inputs: list
    outputs: list


@dataclass
class Ticks:
    """The parts `timer` runs at each tick; `wire()` registers them as one event."""
    timer: gr.Timer
    parts: list[TickPart] = field(default_factory=list)

    def add(self, handler: Callable, inputs: Sequence, outputs: Sequence) -> None:
        self.parts.append(TickPart(handler, list(inputs), list(outputs)))

    def run(self, *values) -> list:
        """Every part's handler on its slice of `values`; their outputs in order."""
        updates, start = [], 0
        for part in self.parts:
            result = part.handler(*values[start:start + len(part.inputs)])
            start += len(part.inputs)
            updates += list(result) if len(part.outputs) > 1 else [result]
        return updates

    def wire(self) -> None:
        outputs = [component for part in self.parts for component in part.outputs]
        if len(set(map(id, outputs))) != len(outputs):
            raise ValueError("two parts of one tick update the same component")
        self.timer.tick(self.run, inputs=[component for part in self.parts for component in part.inputs],
                        outputs=outputs)
