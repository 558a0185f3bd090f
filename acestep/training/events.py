"""What a run reports, and who listens: `events.jsonl` (the contract the UI and the job manager
read), TensorBoard and the console. The loop emits plain dicts; listeners are side effects at the
edge, and only the main process (rank 0) has them.

Event fields: `type` (start, log, epoch, validation, checkpoint, best, warning, stop, done,
error, ranks, preview), `time`, and when they apply `step`, `epoch`, `loss`, `lr`, `val_loss`,
`grad_norm` and `grad_norm_max` (log: the mean and the largest gradient norm before clipping),
`vram` (peak GiB), `samples_per_second`, `message`, `checksums` (ranks: one adapter checksum per
process), `files` (preview: the wav and PNG files, relative to the run folder), `effect_db`
(preview: {strength: adapter effect in dB}), `songs_distance` (preview: {strength: latent distance
to the songs of data.tensors_dir}; both explained in `acestep.inference.effect`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from acestep.errors import TrainingError
from acestep.files import is_disk_full

from acestep.training.run_layout import EVENTS_FILE

Listener = Callable[[dict], None]


class EventLog:
    """Appends one JSON object per line to `events.jsonl`, flushed at once (a reader polling the
    file never sees half a line)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / EVENTS_FILE
        self._stream = self.path.open("a", encoding="utf-8")

    def __call__(self, event: dict) -> None:
        try:
            self._stream.write(json.dumps(event, default=str) + "\n")
            self._stream.flush()
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            raise TrainingError(f"The disk is full: could not write {self.path}. The checkpoints written before are "
                                "intact; free some space and resume the run.") from exc

    def close(self) -> None:
        self._stream.close()


class TensorBoardListener:
    """Scalars for TensorBoard in `<run>/tensorboard`."""

    SCALARS = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
               "grad_norm_max": "train/grad_norm_max", "val_loss": "validation/loss", "vram": "system/vram_gib",
               "samples_per_second": "system/samples_per_second"}

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def __call__(self, event: dict) -> None:
        if event.get("step") is None:
            return
        if event["type"] == "preview":
            for field, tag in (("effect_db", "adapter_effect_db"), ("songs_distance", "songs_distance")):
                for strength, value in (event.get(field) or {}).items():
                    self.writer.add_scalar(f"preview/{tag}/strength_{strength}", value, event["step"])
            self.writer.flush()
            return
        if event["type"] not in ("log", "validation", "epoch"):
            return
        for field, tag in self.SCALARS.items():
            if event.get(field) is not None:
                prefix = "epoch/" if event["type"] == "epoch" and field == "loss" else ""
                self.writer.add_scalar(prefix + tag, event[field], event["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def console_listener(event: dict) -> None:
    """One readable line per event on stdout."""
    kind = event["type"]
    if kind == "log":
        print(f"step {event['step']:>6}  epoch {event['epoch']:>3}  loss {event['loss']:.5f}  lr {event['lr']:.3g}"
              + (f"  grad norm {event['grad_norm']:.3g}" if event.get("grad_norm") is not None else "")
              + (f"  {event['samples_per_second']:.2f} samples/s" if event.get("samples_per_second") else "")
              + (f"  vram {event['vram']:.1f} GiB" if event.get("vram") else ""), flush=True)
    elif kind in ("epoch", "validation"):
        value = event.get("val_loss") if kind == "validation" else event.get("loss")
        print(f"{kind} {event['epoch']}: {'val_loss' if kind == 'validation' else 'loss'} {value:.5f}", flush=True)
    else:
        print(f"[{kind}] {event.get('message', '')}", flush=True)


def make_event(kind: str, **fields) -> dict:
    return {"type": kind, "time": time.time(), **{k: v for k, v in fields.items() if v is not None}}
