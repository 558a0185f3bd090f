"""The run's event log: one JSON line per event, and a full disk said as such; the TensorBoard scalars."""

import errno
import json

import pytest

from acestep.errors import TrainingError
from acestep.training.events import EventLog, TensorBoardListener, make_event


def test_events_are_appended_as_json_lines_and_a_full_disk_is_a_clear_error(tmp_path):
    log = EventLog(tmp_path)
    log(make_event("log", step=1, loss=0.5))
    assert json.loads((tmp_path / "events.jsonl").read_text())["loss"] == 0.5

    class FullDisk:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    log._stream = FullDisk()
    with pytest.raises(TrainingError, match=r"The disk is full: could not write .*events\.jsonl\. The checkpoints "
                                            "written before are intact; free some space and resume the run"):
        log(make_event("log", step=2, loss=0.4))


def test_tensorboard_gets_the_logged_scalars_and_the_preview_effects(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = TensorBoardListener(tmp_path)
    board(make_event("log", step=4, epoch=0, loss=0.5, lr=1e-4, grad_norm=0.25, grad_norm_max=0.75))
    board(make_event("epoch", step=4, epoch=0, loss=0.625))
    board(make_event("preview", step=4, epoch=0, files=[], effect_db={"0.5": 1.5, "1": 3.25},
                     songs_distance={"0": 1.25, "0.5": 1.0, "1": 0.75}))
    board(make_event("preview", step=8, epoch=1, files=[], songs_distance={"1": 0.5}))  # no strength 0: no effect
    board(make_event("warning", step=8, message="ignored"))
    board.close()
    scalars = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    read = {tag: [(e.step, e.value) for e in scalars.Scalars(tag)] for tag in scalars.Tags()["scalars"]}
    assert read == {"train/loss": [(4, 0.5)], "train/lr": [(4, pytest.approx(1e-4))], "train/grad_norm": [(4, 0.25)],
                    "train/grad_norm_max": [(4, 0.75)], "epoch/train/loss": [(4, 0.625)],
                    "preview/adapter_effect_db/strength_0.5": [(4, 1.5)],
                    "preview/adapter_effect_db/strength_1": [(4, 3.25)],
                    "preview/songs_distance/strength_0": [(4, 1.25)], "preview/songs_distance/strength_0.5": [(4, 1.0)],
                    "preview/songs_distance/strength_1": [(4, 0.75), (8, 0.5)]}
