"""Where does this Python run, is that the project's env/, and which command fixes a problem.

Standard library only: launch.py uses this under a bare Python.
"""

from __future__ import annotations

import enum
import os
import sys
from pathlib import Path, PurePosixPath, PureWindowsPath

ALLOW_OTHER_ENV_VARIABLE = "ACESTEP_ALLOW_OTHER_ENV"


class Problem(enum.Enum):
    """What stops the trainer from running; each has one fix command (see `fix_command`)."""

    NO_PROJECT_ENV = "the project environment env/ does not exist"
    OUTSIDE_PROJECT_ENV = "this Python is not the project environment env/"
    PACKAGES = "required packages are missing or broken"


def project_root() -> Path:
    """The folder holding launch.py, install.sh and env/ (two levels above this package)."""
    return Path(__file__).resolve().parents[2]


def project_env_dir() -> Path:
    """The project's virtual environment folder: <project root>/env."""
    return project_root() / "env"


def compile_cache_dir() -> Path:
    """Where torch.compile keeps the kernels it generates for training runs (`acestep.cli` points
    TORCHINDUCTOR_CACHE_DIR here): <project root>/cache/torch-compile."""
    return project_root() / "cache" / "torch-compile"


def running_in_project_env() -> bool:
    """True when this interpreter's sys.prefix is the project's env/ folder."""
    try:
        return Path(sys.prefix).resolve() == project_env_dir().resolve()
    except OSError:
        return False


def other_env_allowed() -> bool:
    """True when ACESTEP_ALLOW_OTHER_ENV is 1/true/yes: accept a conda, docker or system env."""
    value = os.environ.get(ALLOW_OTHER_ENV_VARIABLE, "").strip().lower()
    return value in ("1", "true", "yes")


def problem_at(env_exists: bool, in_project_env: bool, allowed: bool) -> Problem | None:
    """The location problem for these facts: None when in env/ or another env is allowed."""
    if in_project_env or allowed:
        return None
    return Problem.OUTSIDE_PROJECT_ENV if env_exists else Problem.NO_PROJECT_ENV


def location_problem() -> Problem | None:
    """Cheap check (imports nothing): NO_PROJECT_ENV / OUTSIDE_PROJECT_ENV, or None when fine."""
    return problem_at(project_env_dir().is_dir(), running_in_project_env(), other_env_allowed())


def fix_command(problem: Problem, *, windows: bool | None = None,
                root: Path | None = None, cwd: Path | None = None) -> str:
    """The exact command that fixes `problem` on this platform (or on Windows / POSIX when
    `windows` says so). Paths are relative when `cwd` (default: the current folder) is the
    project root `root`, absolute otherwise, and quoted when they hold a space. In an
    environment accepted by ACESTEP_ALLOW_OTHER_ENV, the package fix is pip for this Python."""
    win = os.name == "nt" if windows is None else windows
    root = root or project_root()
    at_root = _is_current_folder(root, cwd)
    base = (PureWindowsPath if win else PurePosixPath)("" if at_root else str(root))

    def at(*parts: str, prefix: str = "") -> str:
        return _quoted(prefix + str(base.joinpath(*parts)))

    def script(name: str) -> str:  # a bare `install.sh` is not looked up in the cwd: prefix ./
        return at(f"{name}.bat") if win else at(f"{name}.sh", prefix="./" if at_root else "")

    env_python = at("env", "Scripts", "python") if win else at("env", "bin", "python")
    if problem is Problem.NO_PROJECT_ENV:
        return script("install")
    if problem is Problem.OUTSIDE_PROJECT_ENV:
        return f"{script('start')}   (or: {env_python} {at('launch.py')})"
    pip_args = f"-m pip install -r {at('requirements.txt')} -e {at('')}"
    if other_env_allowed() and not running_in_project_env():
        return f"{_quoted(sys.executable)} {pip_args}"
    return f"{script('install')}   (or: {env_python} {pip_args})"


def _is_current_folder(folder: Path, cwd: Path | None) -> bool:
    try:
        return Path(folder).resolve() == (Path(cwd) if cwd is not None else Path.cwd()).resolve()
    except OSError:  # the current folder was deleted
        return False


def _quoted(text: str) -> str:
    return f'"{text}"' if " " in text else text
