"""Migrations of training configs written by older versions of the trainer.

`MIGRATIONS[n]` turns the raw dict of a version-n config into a version-n+1 one; `migrate` runs
them in order before the config is type-checked, so old run folders and presets keep loading.
A file without "version" is version 1.

How to write one (when a field is renamed, moved, or changes meaning or default):
- it takes the raw dict as decoded from TOML/JSON (a private copy: it may change it in place)
  and returns the new dict; `migrate` sets "version" afterwards;
- it must accept partial dicts (presets hold a few sections and fields) and values of any type
  (a wrong type is reported by validation afterwards, with the field's new name);
- when a default changes, it writes the old default into configs that leave the field out, so
  an old run's config reproduces that run;
- it raises ConfigError (naming the field) only for something that cannot be carried over.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

from acestep.errors import ConfigError

MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def migrate(data: dict[str, Any], source: str, current: int) -> dict[str, Any]:
    """A copy of `data` migrated to version `current`, with "version" set to it.

    Raises ConfigError (prefixed with `source`) for a version that is not a whole number, one
    newer than `current` ("written by a newer trainer"), one with no migration path, or a
    migration that fails. `data` itself is never changed.
    """
    version = data.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ConfigError(f"{source}: version must be a whole number, found {_short(version)}")
    if version > current:
        raise ConfigError(f"{source}: written by a newer trainer (config version {_short(version)}; this trainer "
                          f"reads up to version {current}); update the trainer")
    migrated = copy.deepcopy(data)
    while version < current:
        step = MIGRATIONS.get(version)
        if step is None:
            raise ConfigError(f"{source}: config version {_short(version)} is not one this trainer knows "
                              f"(it reads versions 1 to {current})")
        try:
            migrated = step(migrated)
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from error
        except Exception as error:  # a migration meeting values it did not expect
            raise ConfigError(f"{source}: cannot migrate the config from version {version} to "
                              f"{version + 1} ({type(error).__name__}: {error})") from error
        if not isinstance(migrated, dict):
            raise ConfigError(f"{source}: the migration from version {version} returned "
                              f"{type(migrated).__name__}, not a dict")
        version += 1
        migrated["version"] = version
    migrated["version"] = current
    return migrated


def _short(value: Any) -> str:
    if isinstance(value, int) and value.bit_length() > 64:
        return "a whole number too large"
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # ints past the str() digit limit, absurd nesting
        return f"a {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."
