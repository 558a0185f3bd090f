"""Deleting a run's checkpoints or the whole run: what goes, what stays, and when it is refused."""

import json
from pathlib import Path

import pytest

from acestep.cli import main
from acestep.files import folder_bytes
from acestep.training import checkpoint as ckpt
from acestep.training.run_cleanup import delete_checkpoints, delete_run
from acestep.training.run_folders import RunFolderError
from acestep.training.run_lock import RunLock


def write_run(runs: Path, name: str, ending: str = "done") -> Path:
    """A run folder with two complete checkpoints, best/ and final/, ending with an `ending` event."""
    run = runs / name
    run.mkdir(parents=True)
    (run / "config.toml").write_text("version = 1\n")
    events = [{"type": "start", "step": 0, "epoch": 0}, {"type": ending, "step": 20, "epoch": 2}]
    (run / "events.jsonl").write_text("".join(json.dumps(event) + "\n" for event in events))
    for step in (10, 20):
        ckpt.write_checkpoint(run, step, {"epoch": 1}, lambda folder: (
            folder.mkdir(), (folder / "adapter_model.safetensors").write_bytes(b"x" * 5000)))
    for name in ("best", "final"):
        (run / name).mkdir()
        (run / name / "adapter_model.safetensors").write_bytes(b"y" * 3000)
    return run


def test_a_finished_run_s_checkpoints_go_and_its_adapters_stay(tmp_path):
    run = write_run(tmp_path, "finished")
    size = folder_bytes(run / "checkpoints")
    assert size > 10_000 and delete_checkpoints(run) == size
    assert not (run / "checkpoints").exists() and (run / "best").is_dir() and (run / "final").is_dir()
    assert sorted(p.name for p in run.iterdir()) == ["best", "config.toml", "events.jsonl", "final"]  # nothing hidden
    assert delete_checkpoints(run) == 0  # again: nothing left to delete


def test_an_unfinished_run_keeps_its_checkpoints_unless_forced(tmp_path):
    run = write_run(tmp_path, "stopped", ending="stop")
    with pytest.raises(RunFolderError, match="has not finished \\(stopped\\): its checkpoints are what it resumes "
                                             "from"):
        delete_checkpoints(run)
    assert len(ckpt.complete_checkpoints(run)) == 2
    with pytest.raises(RunFolderError) as refusal:  # the web app says how its user forces it
        delete_checkpoints(run, how_to_force='tick "Also for a run that has not finished"')
    assert str(refusal.value) == ("Run stopped has not finished (stopped): its checkpoints are what it resumes from. "
                                  "Resume it to the end first, or delete the whole run, or tick \"Also for a run "
                                  "that has not finished\".")
    assert len(ckpt.complete_checkpoints(run)) == 2
    assert delete_checkpoints(run, force=True) > 0 and not ckpt.complete_checkpoints(run)


def test_nothing_is_deleted_while_a_process_trains_the_run(tmp_path):
    run = write_run(tmp_path, "training", ending="start")
    lock = RunLock.acquire(run)
    try:
        for delete in (delete_run, lambda folder: delete_checkpoints(folder, force=True)):
            with pytest.raises(RunFolderError, match="is being trained by process .*; stop it first"):
                delete(run)
    finally:
        lock.release()
    assert len(ckpt.complete_checkpoints(run)) == 2


def test_a_deleted_run_is_gone_with_what_an_interrupted_deletion_left(tmp_path):
    run = write_run(tmp_path, "old")
    (tmp_path / ".old.del-99999").mkdir()  # an earlier deletion of a run of that name, cut short
    size = folder_bytes(run)
    assert delete_run(run) == size
    assert list(tmp_path.iterdir()) == []


def test_the_runs_command_deletes_checkpoints_and_runs(tmp_path, capsys):
    write_run(tmp_path, "finished")
    write_run(tmp_path, "stopped", ending="stop")
    assert main(["runs", str(tmp_path), "--delete-checkpoints", "finished"]) == 0
    assert "Deleted the checkpoints of run finished (" in capsys.readouterr().out
    assert main(["runs", str(tmp_path), "--delete-checkpoints", "stopped"]) == 1
    assert "pass --force" in capsys.readouterr().err
    assert main(["runs", str(tmp_path), "--delete", "stopped"]) == 0
    assert "Deleted run stopped (" in capsys.readouterr().out
    assert main(["runs", str(tmp_path), "--delete", "nope"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["finished"]
