"""Labels from CSV files anywhere under the audio folder (exports of BPM/key tools, spreadsheets).

Column names are flexible and case-insensitive (see `COLUMN_ALIASES`); other columns (Artist,
Title, Camelot, ...) are ignored. The delimiter is `,`, `;` or tab, whichever the header uses
most. A row names its audio file by a path relative to the CSV's folder or by its bare file
name; rows are numbered as a spreadsheet shows them (the header is row 1).
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from acestep.dataset.sidecars import FIELD_ALIASES, normalize_name, parse_metadata
from acestep.errors import DatasetError

FILE_COLUMNS = ("file", "filename", "file_name", "audio", "audio_path", "path")
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {"file": FILE_COLUMNS, **FIELD_ALIASES}
_COLUMN_TO_FIELD = {alias: name for name, aliases in COLUMN_ALIASES.items() for alias in aliases}


@dataclass
class CsvRow:
    """One data row: where it is, the audio file it names (as a path relative to the audio folder
    and as a bare name), its labels, and the problem with its values, if any."""

    where: str
    path_key: str
    name_key: str
    metadata: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class CsvIndex:
    """Every row of every CSV under a folder, found by path or by bare name."""

    by_path: dict[str, list[CsvRow]] = field(default_factory=dict)
    by_name: dict[str, list[CsvRow]] = field(default_factory=dict)
    used: set[int] = field(default_factory=set)
    audio_paths: set[str] = field(default_factory=set)
    name_counts: Counter[str] = field(default_factory=Counter)

    def set_audio_files(self, relative_paths: list[str]) -> None:
        """The audio files being labelled (POSIX paths relative to the audio folder)."""
        self.audio_paths = set(relative_paths)
        self.name_counts = Counter(PurePosixPath(path).name for path in relative_paths)

    def add(self, row: CsvRow) -> None:
        self.by_path.setdefault(row.path_key, []).append(row)
        self.by_name.setdefault(row.name_key, []).append(row)

    def rows(self) -> list[CsvRow]:
        return [row for rows in self.by_path.values() for row in rows]

    def lookup(self, relative: str) -> dict[str, Any]:
        """The labels for the audio file at `relative`, one of those given to `set_audio_files`.

        A row naming this path wins. A row naming a bare file name (or a path that is not one of
        the audio files) applies only when one audio file has that name. Raises DatasetError for
        a row with a bad value and for several rows describing the same file.
        """
        name = PurePosixPath(relative).name
        rows = self.by_path.get(relative)
        if not rows:  # rows naming a file that is not one of the audio files may mean this one
            rows = [r for r in self.by_name.get(name, []) if r.path_key not in self.audio_paths]
        if not rows:
            return {}
        self.used.update(id(row) for row in rows)
        if len(rows) > 1:
            raise DatasetError(f"{' and '.join(row.where for row in rows)} all describe {relative}: keep one row")
        row = rows[0]
        if row.error:
            raise DatasetError(row.error)
        same_name = self.name_counts[name]
        if relative not in self.by_path and same_name > 1:
            raise DatasetError(
                f"{row.where} names {row.name_key!r}, which matches {same_name} audio files: "
                "write the path relative to the CSV's folder"
            )
        return dict(row.metadata)

    def unused(self) -> list[CsvRow]:
        return [row for row in self.rows() if id(row) not in self.used]


def find_csv_files(folder: Path) -> list[Path]:
    """Every *.csv under `folder` (any case), sorted, outside hidden folders."""
    found = []
    for directory, subdirectories, files in os.walk(folder):
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
        found += [Path(directory) / f for f in files if f.lower().endswith(".csv") and not f.startswith(".")]
    return sorted(found)


def read_csv_rows(csv_path: Path, folder: Path) -> list[CsvRow]:
    """The data rows of one CSV. Raises DatasetError naming the CSV when it cannot be read, is not
    UTF-8, has no header, no file column, or two columns for one field; a bad value in a row is
    kept in that row's `error` (so one bad row does not stop the others)."""
    text = _read_text(csv_path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text))
    try:
        lines = list(reader)
    except csv.Error as error:
        raise DatasetError(f"{csv_path}: line {reader.line_num} is not valid CSV ({error}); fix that line or "
                           "save the file again from a spreadsheet as CSV") from error
    if not lines or not any(cell.strip() for cell in lines[0]):
        raise DatasetError(f"{csv_path}: is empty; a metadata CSV needs a header row with a file column")
    columns = _map_columns(csv_path, lines[0])
    base = csv_path.parent.relative_to(folder)
    rows = []
    for number, cells in enumerate(lines[1:], start=2):
        if not any(cell.strip() for cell in cells):
            continue
        raw = {name: cells[i] for name, i in columns.items() if i < len(cells)}
        where = f"{csv_path} row {number}"
        audio = raw.pop("file", "").strip().replace("\\", "/")
        if not audio:
            rows.append(CsvRow(where, "", "", error=f"{where}: has no file name"))
            continue
        row = CsvRow(where, _path_key(audio, base, folder), PurePosixPath(audio).name)
        try:
            row.metadata = parse_metadata(raw)
        except ValueError as error:
            row.error = f"{where}: {error}"
        rows.append(row)
    return rows


def index_csv_files(folder: Path) -> tuple[CsvIndex, list[tuple[Path, str]]]:
    """All CSV rows under `folder`, and the CSV files that could not be used with the reason."""
    index, broken = CsvIndex(), []
    for csv_path in find_csv_files(folder):
        try:
            rows = read_csv_rows(csv_path, folder)
        except DatasetError as error:
            broken.append((csv_path, str(error)))
            continue
        for row in rows:
            index.add(row)
    return index, broken


def read_csv_metadata(folder: str | Path) -> dict[str, dict[str, Any]]:
    """Labels from every CSV under `folder`, keyed by the audio file's path relative to `folder`
    (POSIX) and by its bare file name (when only one row uses that name).

    Raises DatasetError naming the CSV (and row) for an unreadable or non-UTF-8 file, a CSV
    without a file column (the message lists its columns), a bad value (a bpm of "fast"), a row
    without a file name, or two rows for the same path.
    """
    folder = Path(os.path.abspath(folder))
    result: dict[str, dict[str, Any]] = {}
    names: dict[str, list[CsvRow]] = {}
    seen: dict[str, CsvRow] = {}
    for csv_path in find_csv_files(folder):
        for row in read_csv_rows(csv_path, folder):
            if row.error:
                raise DatasetError(row.error)
            if row.path_key in seen:
                raise DatasetError(f"{seen[row.path_key].where} and {row.where} both describe {row.path_key}")
            seen[row.path_key] = row
            result[row.path_key] = row.metadata
            names.setdefault(row.name_key, []).append(row)
    for name, rows in names.items():
        if len(rows) == 1 and name not in result:
            result[name] = rows[0].metadata
    return result


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DatasetError(
            f"{path}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at position {error.start}); "
            "save it as \"CSV UTF-8\""
        ) from None
    except OSError as error:
        raise DatasetError(f"{path}: cannot read the CSV ({error.strerror or error})") from None


def _delimiter(text: str) -> str:
    header = text.split("\n", 1)[0]
    return max((",", ";", "\t"), key=header.count)


def _map_columns(csv_path: Path, header: list[str]) -> dict[str, int]:
    columns: dict[str, int] = {}
    for i, title in enumerate(header):
        name = _COLUMN_TO_FIELD.get(normalize_name(title))
        if name is None:
            continue
        if name in columns:
            raise DatasetError(
                f"{csv_path}: columns {header[columns[name]]!r} and {title!r} both give the {name}; keep one"
            )
        columns[name] = i
    if "file" not in columns:
        raise DatasetError(
            f"{csv_path}: has no file column ({', '.join(FILE_COLUMNS)}); its columns are: "
            + ", ".join(repr(h) for h in header)
        )
    return columns


def _path_key(audio: str, base: Path, folder: Path) -> str:
    """The row's file as a POSIX path relative to the audio folder (absolute if outside it)."""
    path = PurePosixPath(audio)
    if path.is_absolute() or Path(audio).is_absolute():
        try:
            return Path(audio).relative_to(folder).as_posix()
        except ValueError:
            return audio
    return PurePosixPath(os.path.normpath((base / path).as_posix())).as_posix()
