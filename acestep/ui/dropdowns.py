"""Dropdowns whose items are files in the workspace (datasets, tensors folders, runs, models),
read again whenever one is opened, so that a file saved since the page loaded (by this browser or
another) is offered, while the chosen item keeps its place in the list (`reopened_choices` says
why). The Dataset, Preprocess and Train tabs use them."""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr


def reopened_choices(shown: list, fresh: list, current) -> list | None:
    """The items a dropdown takes when it is opened and they are read again (`fresh`), while it
    shows `shown` with `current` chosen; None when nothing changed. The chosen item keeps its place:
    while the list is open Gradio (6.31) keeps the tick, and what Enter picks, at the place the
    chosen item had, whatever value comes with the update. So the items shown stay where they are,
    new ones go at the end, and the gone ones are dropped unless they come before the chosen one
    (those stay until the list is read again while closed: `relisted`). Items are values or
    (label, value) pairs, compared by their value."""
    shown_values, fresh_values = [_value(item) for item in shown], {_value(item) for item in fresh}
    place = shown_values.index(current) if current in shown_values else -1
    kept = [item for index, item in enumerate(shown) if index <= place or _value(item) in fresh_values]
    items = kept + [item for item in fresh if _value(item) not in shown_values]
    return None if items == shown else items


def _value(item):
    """The value of a dropdown item: itself, or the second of a (label, value) pair."""
    return item[1] if isinstance(item, (tuple, list)) else item


def read_when_opened(dropdown: gr.Dropdown, read: Callable[[], list]) -> gr.State:
    """Read `dropdown`'s items again whenever it is opened (a file saved since the page loaded is
    offered), ordered by `reopened_choices`. Returns the page's state of the items the dropdown
    shows: any other handler that sets its items sets that state too (see `relisted`)."""
    shown = gr.State([value if label == value else (label, value) for label, value in dropdown.choices])

    def opened(current, items):
        new = reopened_choices(items, read(), current)
        return gr.skip() if new is None else (gr.update(choices=new), new)

    dropdown.focus(opened, inputs=[dropdown, shown], outputs=[dropdown, shown], show_progress="hidden")
    return shown


def relisted(items: list, current) -> tuple[dict, list]:
    """For a dropdown of `read_when_opened` that is closed (a Refresh button, a save): the update
    to `items` keeping `current` chosen, and the state of the items shown."""
    return gr.update(choices=items, value=current), items
