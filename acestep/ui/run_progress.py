"""What a run's events say while it trains, as the Train tab shows it: the loss, validation-loss,
learning-rate and gradient-norm curves, the progress line (step of total, epoch, loss, speed, ETA, or how the
run ended, and its warnings) and its newest audio previews. Events and folders only (no torch)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pandas as pd

from acestep.inference.effect import distance_summary, effect_summary, recorded_distances, recorded_effects
from acestep.inference.render import read_record, render_order
from acestep.training.run_folders import epochs_finished
from acestep.training.run_layout import PREVIEWS_FOLDER

_STEPS_IN_ALL = re.compile(r"(\d+) steps in all")  # the start event's message (TrainingSession.start_message)
_ENDED = {"done": "finished", "stop": "stopped", "error": "failed"}
LISTEN_HINT = "hear its adapters on the **Listen** tab"


def plot_frames(events: list[dict]) -> dict[str, pd.DataFrame]:
    """Data for the plots: "loss" (step, loss), "val_loss" (step, val_loss), "lr" (step, lr),
    "grad_norm" (step, grad_norm: the mean gradient norm since the previous log). A step logged
    again after a resume keeps its last value."""
    frames = {}
    for name, kind in (("loss", "log"), ("val_loss", "validation"), ("lr", "log"), ("grad_norm", "log")):
        rows = [(event["step"], event[name]) for event in events
                if event.get("type") == kind and event.get(name) is not None and event.get("step") is not None]
        frame = pd.DataFrame(rows, columns=["step", name])
        frames[name] = frame.drop_duplicates("step", keep="last").sort_values("step").reset_index(drop=True)
    return frames


def progress_markdown(events: list[dict], now: float | None = None) -> str:
    """Markdown: step of total, epoch (`epochs_finished`), last loss, seconds per step and ETA
    (from the log events since the last start), or how the run ended; then the warnings since the
    last start, one line each (a run's own notices: LoKr dropout, torch.compile giving up, a failed
    preview...)."""
    if not events:
        return "No events yet."
    start = max((i for i, event in enumerate(events) if event.get("type") == "start"), default=0)
    totals = [int(match.group(1)) for event in events if event.get("type") == "start"
              for match in [_STEPS_IN_ALL.search(str(event.get("message", "")))] if match]
    total = totals[-1] if totals else None
    logs = [event for event in events[start:] if event.get("type") == "log"]
    last = events[-1]
    step = max((event.get("step") or 0 for event in events[start:]), default=0)
    parts = [f"**Step {step}" + (f" of {total} ({100 * step / total:.0f} %)**" if total else "**")]
    epoch = epochs_finished(events[start:])
    if epoch is not None:
        parts.append(f"epoch {epoch}")
    if logs and logs[-1].get("loss") is not None:
        parts.append(f"loss {logs[-1]['loss']:.4f}")
    if last.get("type") in _ENDED:
        message = last.get("message") or _ENDED[last["type"]]
        parts.append(f"failed: {message}" if last["type"] == "error" else message)
        if last["type"] != "error":
            parts.append(LISTEN_HINT)
    elif logs:
        parts += _speed(_rate_reference(events[start], logs), logs[-1], total, now)
    warnings = [f"\n\n⚠ step {event.get('step', '?')}: {event.get('message', '')}" for event in events[start:]
                if event.get("type") == "warning"]
    return " · ".join(parts) + "".join(warnings)


def preview_files(run_dir: Path) -> tuple[str, list[tuple[str, Path]]]:
    """(a heading, [(label, wav)]) of the newest previews in `<run>/previews/step-N/`; the heading
    names the adapter effect and the latent distances to the songs its `preview.json`
    records."""
    steps = sorted(folder for folder in (Path(run_dir) / PREVIEWS_FOLDER).glob("step-*") if folder.is_dir())
    for folder in reversed(steps):
        wavs = sorted(folder.glob("*.wav"), key=lambda path: render_order(path.stem))
        if wavs:
            step = folder.name.removeprefix("step-").lstrip("0") or "0"
            record = read_record(folder)
            effects, distances = recorded_effects(record), recorded_distances(record)
            heading = f"Previews at step {step}" + (f" · adapter effect {effect_summary(effects)}" if effects else "")
            if distances:
                heading += f" · latent distance to the songs {distance_summary(distances)}"
            return heading, [(path.stem.replace("-", " "), path) for path in wavs]
    return "No previews yet (set run.preview_every_epochs or run.preview_every_steps).", []


def _speed(reference: dict, last_log: dict, total: int | None, now: float | None) -> list[str]:
    """["2.00 s/step", "ETA 2 min 35 s"] measured from `reference` to the last log, or []."""
    if not reference or last_log["step"] <= reference["step"]:
        return []
    per_step = (last_log["time"] - reference["time"]) / (last_log["step"] - reference["step"])
    if not total:
        return [f"{per_step:.2f} s/step"]
    elapsed = max(0.0, (now or time.time()) - last_log["time"])
    return [f"{per_step:.2f} s/step", f"ETA {_duration(max(0.0, (total - last_log['step']) * per_step - elapsed))}"]


def _rate_reference(start: dict, logs: list[dict]) -> dict:
    """The event the speed is measured from: the first log (model loading excluded), or the
    start event while there is one log only."""
    if len(logs) >= 2:
        return logs[0]
    return start if start.get("type") == "start" and "time" in start and "step" in start else {}


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    return (f"{hours} h {rest // 60} min" if hours else f"{rest // 60} min {rest % 60} s" if rest >= 60
            else f"{rest} s")
