"""Small files and folders: every way a small JSON file can be wrong ends in the caller's own error
type; files and folders are replaced whole or not at all."""

from pathlib import Path

import pytest

from acestep.errors import CheckpointError
from acestep.files import (delete_folder, folder_bytes, new_folder, read_json_object, recover_replaced_folder,
                           replaced_folder, size_text, tail_lines)


@pytest.mark.parametrize("content, message", [
    (b"{oops", r"is not valid JSON \(Expecting property name enclosed in double quotes at line 1, column 2\)"),
    (b"[1, 2]", "is not a JSON object"),
    (b"\xff\xfe{}", "is not readable JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "is not readable JSON"),
])
def test_bad_content_raises_the_callers_error(tmp_path, content, message):
    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        read_json_object(path, CheckpointError, "missing")


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match="^nothing here$"):
        read_json_object(tmp_path / "absent.json", CheckpointError, "nothing here")
    with pytest.raises(CheckpointError, match="is a folder, not a JSON file"):
        read_json_object(tmp_path, CheckpointError, "missing")


def test_object_is_returned(tmp_path):
    (tmp_path / "a.json").write_text('{"r": 4}')
    assert read_json_object(tmp_path / "a.json", CheckpointError, "missing") == {"r": 4}


def test_write_atomically_replaces_keeps_mode_and_cleans_up(tmp_path, monkeypatch):
    import os

    from acestep.files import write_atomically

    target = tmp_path / "sub" / "data.json"
    write_atomically(target, '{"a": 1}')
    assert target.read_text() == '{"a": 1}' and (target.stat().st_mode & 0o777) == 0o644
    target.chmod(0o600)
    write_atomically(target, b"second")
    assert target.read_bytes() == b"second" and (target.stat().st_mode & 0o777) == 0o600

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(CheckpointError, match=r"data.json: cannot write the index \(the disk is full\)"):
        write_atomically(target, "third", CheckpointError, "index")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["data.json"]  # no temporary file left


def test_a_full_disk_is_recognised_from_the_os_and_from_safetensors():
    import errno

    from safetensors import SafetensorError

    from acestep.files import is_disk_full, write_failure

    serializing = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device")) and is_disk_full(serializing)
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))  # a full quota is a full disk to the user
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(SafetensorError("Error while deserializing header: HeaderTooLarge"))
    assert write_failure(serializing) == "the disk is full"
    assert write_failure(OSError(errno.EACCES, "Permission denied")) == "Permission denied"


def test_new_folder_makes_the_first_name_not_taken(tmp_path):
    (tmp_path / "out-2").write_text("a file takes the name too")
    made = [new_folder(tmp_path / "out") for _ in range(3)]
    assert made == [tmp_path / "out", tmp_path / "out-3", tmp_path / "out-4"] and all(p.is_dir() for p in made)
    assert new_folder(tmp_path / "deep" / "er") == tmp_path / "deep" / "er"  # parents are made


def test_replaced_folder_swaps_in_whole_or_keeps_the_old_one(tmp_path, monkeypatch):
    final = tmp_path / "out"
    with replaced_folder(final) as tmp:
        (tmp / "a.txt").write_text("first")
        assert not final.exists()  # nothing is visible until the block ends
    assert [p.name for p in final.iterdir()] == ["a.txt"]
    with pytest.raises(KeyboardInterrupt), replaced_folder(final) as tmp:
        (tmp / "b.txt").write_text("half")
        raise KeyboardInterrupt  # a stop in the middle
    assert [p.name for p in final.iterdir()] == ["a.txt"]
    rename = Path.rename

    def fail_into_final(self, target):
        if Path(target) == final and self.name.startswith(".out.tmp-"):
            raise OSError(28, "No space left on device")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", fail_into_final)
    with pytest.raises(OSError), replaced_folder(final) as tmp:
        (tmp / "c.txt").write_text("new")
    assert [p.name for p in final.iterdir()] == ["a.txt"]  # the previous folder was put back
    monkeypatch.undo()
    with replaced_folder(final) as tmp:
        (tmp / "c.txt").write_text("new")
    assert [p.name for p in final.iterdir()] == ["c.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_kill_in_the_middle_of_the_swap_is_recovered_to_the_previous_folder(tmp_path):
    final = tmp_path / "best"
    final.mkdir()
    (final / "a.txt").write_text("previous")
    # what a SIGKILL between the two renames leaves: the previous folder aside, the new one hidden
    final.rename(tmp_path / ".best.old-4242")
    (tmp_path / ".best.tmp-4242").mkdir()
    (tmp_path / ".best.tmp-4242" / "a.txt").write_text("new")
    assert recover_replaced_folder(final)
    assert (final / "a.txt").read_text() == "previous" and sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    (tmp_path / ".best.tmp-4243").mkdir()  # killed while filling: the folder in place stays
    assert not recover_replaced_folder(final)
    assert (final / "a.txt").read_text() == "previous" and sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    assert not recover_replaced_folder(tmp_path / "missing" / "best")


def test_sizes_are_written_in_the_unit_people_read():
    assert [size_text(n) for n in (0, 1023, 1024, 5 * 2**20 + 2**19, 3 * 2**30, 2**42)] == \
        ["0 B", "1023 B", "1.0 KiB", "5.5 MiB", "3.0 GiB", "4096.0 GiB"]


def test_folder_bytes_counts_the_regular_files_below_without_following_links(tmp_path):
    (tmp_path / "run" / "checkpoints" / "step-000010").mkdir(parents=True)
    (tmp_path / "run" / "config.toml").write_bytes(b"x" * 100)
    (tmp_path / "run" / "checkpoints" / "step-000010" / "state.safetensors").write_bytes(b"y" * 5000)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "big.bin").write_bytes(b"z" * 70_000)
    (tmp_path / "run" / "linked-file").symlink_to(tmp_path / "elsewhere" / "big.bin")
    (tmp_path / "run" / "linked-folder").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert folder_bytes(tmp_path / "run") == 5100
    assert folder_bytes(tmp_path / "run" / "linked-folder") == 70_000  # a linked folder given itself is read
    assert folder_bytes(tmp_path / "missing") == 0
    assert folder_bytes(tmp_path / "run" / "config.toml") == 0  # not a folder


@pytest.mark.parametrize("name", ["run", "song [v2]", "a*b?"])
def test_delete_folder_removes_it_and_earlier_interrupted_deletions_of_that_name(tmp_path, name):
    folder = tmp_path / name
    (folder / "inside").mkdir(parents=True)
    (folder / "inside" / "weights.bin").write_bytes(b"x" * 10)
    (tmp_path / f".{name}.del-99999" / "half").mkdir(parents=True)  # an earlier deletion, killed midway
    (tmp_path / "runner").mkdir()  # another folder whose name starts the same
    (tmp_path / ".runner.del-99999").mkdir()  # ... and its own leftover, not this deletion's business
    delete_folder(folder)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [".runner.del-99999", "runner"]
    with pytest.raises(FileNotFoundError):
        delete_folder(folder)


def test_tail_lines_reads_the_end_of_a_file_without_a_line_its_window_cuts(tmp_path):
    log = tmp_path / "log.txt"
    log.write_bytes(b"".join(b"line %d\n" % n for n in range(1, 11)) + b"bad \xff byte\n")  # 82 bytes
    assert tail_lines(log, 3, 1000) == (["line 9", "line 10", "bad \ufffd byte"], True)  # the file holds more
    assert tail_lines(log, 20, 1000) == ([f"line {n}" for n in range(1, 11)] + ["bad \ufffd byte"], False)
    assert tail_lines(log, 20, 30) == (["line 9", "line 10", "bad \ufffd byte"], True)  # starts in "line 8": left out
    assert tail_lines(log, 0, 1000) == ([], True)
    assert tail_lines(tmp_path / "missing.txt", 5, 1000) == ([], False)


def test_describe_os_error_names_the_path_the_problem_and_the_fix(tmp_path):
    import errno as codes

    from acestep.files import describe_os_error

    full = OSError(codes.ENOSPC, "No space left on device", str(tmp_path / "run" / "ckpt.pt"))
    assert describe_os_error(full) == (
        f"{tmp_path / 'run' / 'ckpt.pt'}: No space left on device; "
        "free some space on that disk and run the command again")
    moved = PermissionError(codes.EACCES, "Permission denied", "/a", None, "/b")
    assert describe_os_error(moved) == (
        "/a -> /b: Permission denied; choose a folder you may write to, or change its permissions")
    assert describe_os_error(OSError("odd")) == "odd"
