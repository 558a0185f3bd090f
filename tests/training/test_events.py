"""The run's event log: one JSON line per event, and a full disk said as such."""

import errno
import json

import pytest

from acestep.errors import TrainingError
from acestep.training.events import EventLog, make_event


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
