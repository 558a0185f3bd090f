"""Every way a small JSON file can be wrong ends in the caller's own error type."""

import pytest

from acestep.errors import CheckpointError
from acestep.files import read_json_object


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
