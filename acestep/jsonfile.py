"""Reading the small JSON files models and adapters come with (config.json, adapter_config.json,
model_index.json): one place that turns every way such a file can be wrong into a clear error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from acestep.errors import AceStepError


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
