"""Reading the small files users and models bring (dataset JSON, training TOML, config.json,
adapter_config.json, sidecars): one place that turns every way such a file can be wrong into a
clear error of the caller's own type, naming the file."""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from acestep.errors import AceStepError


def is_disk_full(exc: BaseException) -> bool:
    """Whether a write failed because the disk (or the user's quota) is full: an OSError, or
    safetensors' error for one (its writer reports "I/O error: ... (os error 28)" in a SafetensorError)."""
    codes = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
    if isinstance(exc, OSError):
        return exc.errno in codes
    from safetensors import SafetensorError  # here, not at the top: launch.py imports this module in a bare Python

    return isinstance(exc, SafetensorError) and any(f"(os error {code})" in str(exc) for code in codes)


_OS_ERROR_FIXES = {
    errno.EEXIST: "a file is in the way where a folder is needed: move it, or choose another path",
    errno.ENOTDIR: "a part of this path is a file, not a folder: choose another path",
    errno.EISDIR: "this is a folder where a file is needed: choose a file",
    errno.ENOENT: "check the path",
    errno.EACCES: "choose a folder you may write to, or change its permissions",
    errno.EPERM: "choose a folder you may write to, or change its permissions",
    errno.EROFS: "choose a folder on a disk that is not read-only",
    errno.ENOSPC: "free some space on that disk and run the command again",
}


def describe_os_error(exc: OSError) -> str:
    """One line for a user from an OSError the code did not foresee: the path(s), what the system
    said, and what to do ("out/x: Not a directory; a part of this path is a file, not a
    folder: choose another path")."""
    paths = " -> ".join(str(name) for name in (exc.filename, exc.filename2) if name is not None)
    problem = exc.strerror or str(exc)
    fix = _OS_ERROR_FIXES.get(errno.ENOSPC if is_disk_full(exc) else exc.errno)
    return "; ".join(part for part in (f"{paths}: {problem}" if paths else problem, fix) if part)


def size_text(count: float) -> str:
    """Bytes as people read them: '512 B', '3.4 KiB', '170.2 MiB', '1.5 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return ""


def free_space(path: str | Path) -> int:
    """Free bytes on the disk that holds `path`, or would hold it (its nearest existing folder)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def folder_bytes(folder: str | Path) -> int:
    """The bytes of the regular files under `folder` (links not followed); 0 when it does not
    exist. One stat per file (the Runs tab sums every run folder at each refresh), and a file or
    folder deleted meanwhile (a checkpoint being pruned) is left out instead of failing."""
    total, pending = 0, [os.fspath(folder)]
    while pending:
        try:
            entries = os.scandir(pending.pop())
        except (FileNotFoundError, NotADirectoryError):
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue
    return total


def tail_lines(path: str | Path, count: int, max_bytes: int) -> tuple[list[str], bool]:
    """The last `count` lines of the text file `path`, read from at most its last `max_bytes` (a
    line that limit cuts is left out), and whether the file holds more; ([], False) for a missing
    file. Undecodable bytes are replaced, so a log with a broken character still reads."""
    try:
        with open(path, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            stream.seek(max(0, size - max_bytes))
            data = stream.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return [], False
    lines = data.decode("utf-8", "replace").splitlines()
    cut = size > max_bytes
    if cut:
        lines = lines[1:]  # the first line read is a part of one
    return (lines[-count:] if count > 0 else []), cut or len(lines) > count


def write_failure(exc: BaseException) -> str:
    """The reason of a failed write, in words: "the disk is full" or the OS's own."""
    if is_disk_full(exc):
        return "the disk is full"
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


def read_text(path: str | Path, error: type[AceStepError], what: str, expected: str) -> str:
    """The UTF-8 text of `path` (a byte-order mark is allowed). Raises `error` with
    "<path>: <what> does not exist", "<path>: is a folder, not a <expected>", "<path>: not UTF-8
    text (...)" or "<path>: cannot read the <what> (...)"."""
    try:
        return Path(path).read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise error(f"{path}: {what} does not exist") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, not a {expected}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None


def read_json_object(path: Path, error: type[AceStepError], missing: str) -> dict[str, Any]:
    """The JSON object in `path`. Raises `error` with `missing` when the file does not exist, and
    with the path and the parser's reason when it is not UTF-8 JSON or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise error(missing) from exc
    except IsADirectoryError as exc:
        raise error(f"{path} is a folder, not a JSON file.") from exc
    except json.JSONDecodeError as exc:
        raise error(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}).") from exc
    except (UnicodeDecodeError, ValueError, RecursionError, OSError) as exc:  # not UTF-8, absurd nesting
        raise error(f"{path} is not readable JSON ({type(exc).__name__}: {exc}).") from exc
    if not isinstance(data, dict):
        raise error(f"{path} is not a JSON object.")
    return data


def write_atomically(path: str | Path, data: bytes | str, error: type[AceStepError] | None = None,
                     what: str = "file") -> Path:
    """Replace `path` with `data` in one step: a temporary file in the same folder is written,
    flushed to disk and renamed over `path`, so a crash or a full disk leaves either the old file
    or the new one. An existing file keeps its permissions (new files get 0644). An OSError is
    raised as `error("<path>: cannot write the <what> (reason)")` when `error` is given."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    temp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
        handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp_name, mode)
        os.replace(temp_name, path)
    except BaseException as exc:
        if temp_name is not None:
            Path(temp_name).unlink(missing_ok=True)
        if isinstance(exc, OSError) and error is not None:
            raise error(f"{path}: cannot write the {what} ({write_failure(exc)})") from None
        raise
    return path


def fsync_folder(path: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk, where the file system allows it."""
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened for fsync
        handle = os.open(path, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


@contextlib.contextmanager
def replaced_folder(final: str | Path, tag: str = "tmp") -> Iterator[Path]:
    """Yield a hidden temporary sibling of `final` to fill. When the block ends without an error the
    sibling takes `final`'s place in one rename (an older `final` is moved aside first and deleted
    after); on any error, a stop included, the sibling is removed and `final` is left as it was, so
    what was there before is never lost to a failed write."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.{tag}-{os.getpid()}"
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            final.rename(old)
        try:
            tmp.rename(final)
        except BaseException:
            if old.exists() and not final.exists():
                old.rename(final)  # put the previous folder back
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    fsync_folder(final.parent)


def recover_replaced_folder(final: str | Path) -> bool:
    """Clean up after a `replaced_folder` that was killed (SIGKILL, power cut): when `final` is
    missing because the kill came between moving the previous folder aside and renaming the new
    one into place, the previous folder is put back. Hidden leftovers of `final` (a folder being
    filled, one moved aside) are then deleted. Returns whether the previous folder was put back."""
    final = Path(final)
    if not final.parent.is_dir():
        return False
    leftovers = [p for p in final.parent.glob(f".{glob.escape(final.name)}.*-*") if p.is_dir()]
    put_back = False
    aside = sorted((p for p in leftovers if ".old-" in p.name), key=lambda p: p.stat().st_mtime)
    if aside and not final.exists():
        aside[-1].rename(final)
        leftovers.remove(aside[-1])
        put_back = True
    for leftover in leftovers:
        shutil.rmtree(leftover, ignore_errors=True)
    return put_back


def delete_folder(folder: str | Path, ignore_errors: bool = False) -> None:
    """Delete `folder` so that an interruption never leaves a half folder that looks whole: it is
    renamed to a hidden `.NAME.del-PID` first, then removed, together with what earlier interrupted
    deletions of the same name left. `ignore_errors` ignores errors of the removal (not of the
    rename, which raises when the folder is missing); leftovers are removed whatever is left of them."""
    folder = Path(folder)
    doomed = folder.with_name(f".{folder.name}.del-{os.getpid()}")
    folder.rename(doomed)
    for leftover in folder.parent.glob(f".{glob.escape(folder.name)}.del-*"):
        shutil.rmtree(leftover, ignore_errors=ignore_errors or leftover != doomed)


def free_folder(folder: Path) -> Path:
    """`folder`, or `folder-2`, `folder-3`, ... : the first that does not exist or is empty."""
    candidate, number = folder, 1
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        number += 1
        candidate = folder.with_name(f"{folder.name}-{number}")
    return candidate


def new_folder(folder: Path) -> Path:
    """Create and return `folder`, or `folder-2`, `folder-3`, ... : the first that does not exist.
    Creating it is what reserves it, so two callers at once never get the same folder."""
    candidate, number = Path(folder), 1
    while True:
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            number += 1
            candidate = Path(folder).with_name(f"{Path(folder).name}-{number}")


# A lock on an open file that goes with the process holding it (no stale locks after a kill).
# POSIX: flock, which belongs to the open file (not the process, unlike lockf), so two opens of one
# file in one process exclude each other too; `offset` does not matter. Windows (untested here): a
# byte-range lock on the byte at `offset`.
if sys.platform == "win32":
    import msvcrt

    def try_lock_file(handle, offset: int = 0) -> bool:
        """Lock the open file `handle` without waiting; whether it was free."""
        handle.seek(offset)
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def unlock_file(handle, offset: int = 0) -> None:
        handle.seek(offset)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def try_lock_file(handle, offset: int = 0) -> bool:
        """Lock the open file `handle` without waiting; whether it was free."""
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def unlock_file(handle, offset: int = 0) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
