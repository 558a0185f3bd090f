"""Checkpoints are complete or absent: crashes and full disks never leave a half checkpoint in use."""

import errno
import os
from pathlib import Path

import pytest

from acestep.errors import TrainingError
from acestep.training import checkpoint as ckpt


def write_adapter(folder):
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"weights")


def test_complete_checkpoint_round_trip_and_latest(tmp_path):
    for step in (10, 20, 30):
        ckpt.write_checkpoint(tmp_path, step, {"epoch": 1, "progress": {"step": step}}, write_adapter)
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path)] == ["step-000010", "step-000020", "step-000030"]
    assert ckpt.read_checkpoint(ckpt.latest_checkpoint(tmp_path))["progress"] == {"step": 30}
    ckpt.prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path)] == ["step-000020", "step-000030"]


def test_a_deletion_cut_short_leaves_no_visible_half_checkpoint(tmp_path, monkeypatch):
    for step in (10, 20, 30):
        ckpt.write_checkpoint(tmp_path, step, {"epoch": 1}, write_adapter)
    root = tmp_path / "checkpoints"

    def killed_midway(path, ignore_errors=False):
        (Path(path) / "COMPLETE").unlink()  # the kill lands after the marker went, before the rest
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(ckpt.shutil, "rmtree", killed_midway)
        with pytest.raises(KeyboardInterrupt):
            ckpt.prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["step-000020", "step-000030"]
    ckpt.remove_leftovers(tmp_path)  # what a resume, or the next checkpoint's prune, does first
    assert sorted(p.name for p in root.iterdir()) == ["step-000020", "step-000030"]


def test_a_checkpoint_killed_while_being_rewritten_is_put_back(tmp_path):
    ckpt.write_checkpoint(tmp_path, 10, {"epoch": 1, "progress": {"step": 10}}, write_adapter)
    root = tmp_path / "checkpoints"
    (root / "step-000010").rename(root / ".step-000010.old-77")  # a rewrite, killed between the renames
    (root / ".step-000010.tmp-77").mkdir()
    assert ckpt.latest_checkpoint(tmp_path) is None
    ckpt.remove_leftovers(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["step-000010"]
    assert ckpt.read_checkpoint(ckpt.latest_checkpoint(tmp_path))["progress"] == {"step": 10}


def test_prune_removes_a_visible_folder_without_the_marker(tmp_path):
    ckpt.write_checkpoint(tmp_path, 20, {"epoch": 1}, write_adapter)
    half = tmp_path / "checkpoints" / "step-000010"
    write_adapter(half / "adapter")  # what an interrupted deletion of an older version leaves
    ckpt.remove_leftovers(tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000020"]


def test_interrupted_write_leaves_the_previous_checkpoint(tmp_path):
    ckpt.write_checkpoint(tmp_path, 10, {"epoch": 0}, write_adapter)

    def crash(folder):
        write_adapter(folder)
        raise KeyboardInterrupt  # a stop in the middle of writing

    with pytest.raises(KeyboardInterrupt):
        ckpt.write_checkpoint(tmp_path, 20, {"epoch": 0}, crash)
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path)] == ["step-000010"]
    assert not list((tmp_path / "checkpoints").glob(".step-*"))


def test_folder_without_marker_is_never_used(tmp_path):
    ckpt.write_checkpoint(tmp_path, 10, {"epoch": 0}, write_adapter)
    partial = tmp_path / "checkpoints" / "step-000020"
    partial.mkdir()  # what a SIGKILL could leave with a non-atomic writer
    assert ckpt.latest_checkpoint(tmp_path).name == "step-000010"
    with pytest.raises(TrainingError, match="not a complete checkpoint"):
        ckpt.read_checkpoint(partial)
    assert ckpt.resolve_resume(tmp_path) == (tmp_path.resolve(), (tmp_path / "checkpoints" / "step-000010").resolve())


def test_full_disk_is_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path):
    ckpt.write_checkpoint(tmp_path, 10, {"epoch": 0}, write_adapter)

    def disk_full(folder):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(TrainingError, match="The disk is full.*previous checkpoints are intact"):
        ckpt.write_checkpoint(tmp_path, 20, {"epoch": 0}, disk_full)
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path)] == ["step-000010"]


def test_a_full_disk_met_by_safetensors_writer_is_the_same_clear_error(tmp_path):
    """safetensors reports the OS's "no space" as a SafetensorError, not an OSError."""
    from safetensors import SafetensorError

    ckpt.write_checkpoint(tmp_path, 10, {"epoch": 0}, write_adapter)

    def disk_full(folder):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    with pytest.raises(TrainingError, match="The disk is full.*previous checkpoints are intact"):
        ckpt.write_checkpoint(tmp_path, 20, {"epoch": 0}, disk_full)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000010"]  # no half-written folder


def test_resume_of_a_run_without_checkpoints_is_refused(tmp_path):
    with pytest.raises(TrainingError, match="holds no complete checkpoint"):
        ckpt.resolve_resume(tmp_path)



def write_named_adapter(run_dir, name, step):
    write_adapter(run_dir / name)
    (run_dir / name / "training_metadata.json").write_text(f'{{"step": {step}}}')


def test_a_resume_from_an_older_checkpoint_sets_the_later_work_aside(tmp_path):
    for step in (16, 20, 24):
        ckpt.write_checkpoint(tmp_path, step, {"epoch": 1}, write_adapter)
    write_named_adapter(tmp_path, "final", 24)
    write_named_adapter(tmp_path, "best", 12)  # before the resume point: still the run's best so far
    aside = ckpt.set_aside_later_work(tmp_path, 16, continuing=True)
    assert aside.parent == tmp_path / "superseded" and aside.name.startswith("after-step-000016-")
    assert sorted(p.relative_to(aside).as_posix() for p in aside.rglob("*") if p.is_dir()) == [
        "checkpoints", "checkpoints/step-000020", "checkpoints/step-000020/adapter", "checkpoints/step-000024",
        "checkpoints/step-000024/adapter", "final"]
    assert ckpt.is_complete(aside / "checkpoints" / "step-000024")  # moved whole
    assert ckpt.resolve_resume(tmp_path)[1].name == "step-000016"  # the run goes on from where it resumed
    assert (tmp_path / "best").is_dir() and not (tmp_path / "final").exists()


def test_a_resume_that_goes_on_training_sets_the_old_final_aside_and_one_that_does_not_keeps_it(tmp_path):
    ckpt.write_checkpoint(tmp_path, 8, {"epoch": 2}, write_adapter)
    write_named_adapter(tmp_path, "final", 8)
    assert ckpt.set_aside_later_work(tmp_path, 8, continuing=False) is None  # finished: final/ is still the end
    assert (tmp_path / "final").is_dir()
    aside = ckpt.set_aside_later_work(tmp_path, 8, continuing=True)  # trained longer: final/ would be stale
    assert (aside / "final" / "training_metadata.json").is_file() and not (tmp_path / "final").exists()
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path)] == ["step-000008"]
