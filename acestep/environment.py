"""Is this Python environment able to run the trainer? Check it, print it, say how to fix it.

Imports only the standard library at import time: `launch.py` and the install scripts use this
module before they know that torch, gradio and the rest are installed.

What "able to run" means:
1. the interpreter is the project's own `env/` (made by install.sh / install.bat), unless the
   environment variable ``ACESTEP_ALLOW_OTHER_ENV=1`` accepts another one (conda, docker, a
   system-wide install). The packages are checked fully either way;
2. every package in `REQUIRED_PACKAGES` really imports (a package that is installed but fails to
   import, such as a CUDA torch with missing libraries, counts as broken).
`OPTIONAL_PACKAGES` and ffmpeg are reported, never required.

Run ``python -m acestep.environment`` to print the table; it exits 1 when something required is
missing or broken, or when the interpreter is not the project's environment.
"""

from __future__ import annotations

import argparse
import enum
import importlib
import importlib.metadata
import importlib.util
import os
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from types import MappingProxyType
from typing import Iterable, Mapping, Sequence

# import name -> pip (distribution) name
REQUIRED_PACKAGES: Mapping[str, str] = MappingProxyType({
    "torch": "torch",
    "diffusers": "diffusers",
    "transformers": "transformers",
    "peft": "peft",
    "lightning": "lightning",
    "gradio": "gradio",
    "safetensors": "safetensors",
    "soundfile": "soundfile",
    "soxr": "soxr",
    "prodigyopt": "prodigyopt",
    "huggingface_hub": "huggingface-hub",
    "accelerate": "accelerate",
    "pydub": "pydub",
    "lycoris": "lycoris-lora",
    "diskcache": "diskcache",
    "pynvml": "nvidia-ml-py",
    "tensorboard": "tensorboard",
    "numpy": "numpy",
    "tomli_w": "tomli-w",
})
OPTIONAL_PACKAGES: Mapping[str, str] = MappingProxyType({
    "bitsandbytes": "bitsandbytes",
    "torchao": "torchao",
    "flash_attn": "flash-attn",
})
ALLOW_OTHER_ENV_VARIABLE = "ACESTEP_ALLOW_OTHER_ENV"
_REASON_WIDTH = 70


class PackageState(enum.Enum):
    OK = "ok"
    MISSING = "MISSING"
    BROKEN = "BROKEN"


class Problem(enum.Enum):
    """What stops the trainer from running; each has one fix command (see `fix_command`)."""

    NO_PROJECT_ENV = "the project environment env/ does not exist"
    OUTSIDE_PROJECT_ENV = "this Python is not the project environment env/"
    PACKAGES = "required packages are missing or broken"


@dataclass(frozen=True)
class PackageStatus:
    """The result of importing one package: state, version and, when broken, why and from where."""

    name: str
    pip_name: str
    required: bool
    state: PackageState
    version: str | None = None
    reason: str | None = None
    origin: str | None = None

    @property
    def ok(self) -> bool:
        return self.state is PackageState.OK


@dataclass(frozen=True)
class TorchSummary:
    """What torch sees: versions, devices, precision support. `error` is set when torch failed."""

    version: str | None = None
    cuda_available: bool = False
    cuda_version: str | None = None
    gpus: tuple[tuple[str, int], ...] = ()
    bf16_supported: bool | None = None
    mps_available: bool = False
    error: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class EnvironmentReport:
    """Everything `check_environment` found; `problem` is None when the trainer can run."""

    python: str
    python_version: str
    env_dir: Path
    env_exists: bool
    in_project_env: bool
    other_env_allowed: bool
    packages: tuple[PackageStatus, ...] = ()
    torch: TorchSummary | None = None
    ffmpeg: str | None = None

    @property
    def problem(self) -> Problem | None:
        location = _location_problem(self.env_exists, self.in_project_env, self.other_env_allowed)
        if location is not None:
            return location
        if any(p.required and not p.ok for p in self.packages):
            return Problem.PACKAGES
        return None


# --- where are we --------------------------------------------------------------------------

def project_root() -> Path:
    """The folder holding launch.py, install.sh and env/ (the parent of this package)."""
    return Path(__file__).resolve().parent.parent


def project_env_dir() -> Path:
    """The project's virtual environment folder: <project root>/env."""
    return project_root() / "env"


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


def _location_problem(env_exists: bool, in_env: bool, allowed: bool) -> Problem | None:
    if in_env or allowed:
        return None
    return Problem.OUTSIDE_PROJECT_ENV if env_exists else Problem.NO_PROJECT_ENV


def location_problem() -> Problem | None:
    """Cheap check (imports nothing): NO_PROJECT_ENV / OUTSIDE_PROJECT_ENV, or None when fine."""
    return _location_problem(project_env_dir().is_dir(), running_in_project_env(),
                             other_env_allowed())


# --- packages ------------------------------------------------------------------------------

def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _installed_version(pip_name: str, module: object = None) -> str | None:
    try:
        return importlib.metadata.version(pip_name)
    except importlib.metadata.PackageNotFoundError:
        version = getattr(module, "__version__", None)
        return str(version) if version is not None else None


def _module_origin(name: str) -> str | None:
    try:
        spec = importlib.util.find_spec(name)
    except Exception:  # a broken parent package can make find_spec itself raise
        return None
    return spec.origin if spec is not None else None


def check_package(name: str, pip_name: str | None = None, *,
                  required: bool = True) -> PackageStatus:
    """Import `name` for real and report it.

    Returns a PackageStatus: OK with its version; MISSING when the module itself is not found;
    BROKEN (with the first line of the error and the file it came from) when importing it raises
    anything else, including a missing dependency of the package. Never raises an Exception.
    """
    pip_name = pip_name or name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # import-time chatter; ffmpeg is reported on its own
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name == name:
                return PackageStatus(name, pip_name, required, PackageState.MISSING)
            return PackageStatus(name, pip_name, required, PackageState.BROKEN,
                                 _installed_version(pip_name), _first_line(error),
                                 _module_origin(name))
        except Exception as error:
            return PackageStatus(name, pip_name, required, PackageState.BROKEN,
                                 _installed_version(pip_name), _first_line(error),
                                 _module_origin(name))
    return PackageStatus(name, pip_name, required, PackageState.OK,
                         _installed_version(pip_name, module))


def check_packages(names: Iterable[str], *, required: bool = True) -> list[PackageStatus]:
    """Import each of `names` (import names; pip names come from the package tables, else the
    import name) and return one PackageStatus per name, in order. Never raises an Exception."""
    known = {**REQUIRED_PACKAGES, **OPTIONAL_PACKAGES}
    return [check_package(name, known.get(name, name), required=required) for name in names]


# --- torch ---------------------------------------------------------------------------------

def torch_summary() -> TorchSummary:
    """Ask torch what it can use: version, CUDA, GPUs (name, total bytes), bf16, MPS.

    Never raises: when torch is missing or fails, the summary's `error` says why.
    """
    try:
        import torch
    except Exception as error:
        return TorchSummary(error=_first_line(error))
    try:
        return _describe_torch(torch)
    except Exception as error:
        return TorchSummary(version=str(torch.__version__), error=_first_line(error))


def _describe_torch(torch) -> TorchSummary:
    cuda = bool(torch.cuda.is_available())
    gpus: tuple[tuple[str, int], ...] = ()
    bf16 = None
    if cuda:
        gpus = tuple((torch.cuda.get_device_name(i),
                      int(torch.cuda.get_device_properties(i).total_memory))
                     for i in range(torch.cuda.device_count()))
        bf16 = bool(torch.cuda.is_bf16_supported())
    mps_backend = getattr(torch.backends, "mps", None)
    mps = bool(mps_backend is not None and mps_backend.is_available())
    note = None
    if not cuda and shutil.which("nvidia-smi"):
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        note = (f"an NVIDIA driver is installed but torch ({build}) cannot use it; "
                f"for GPU training re-run the installer with --cuda")
    return TorchSummary(version=str(torch.__version__), cuda_available=cuda,
                        cuda_version=torch.version.cuda, gpus=gpus, bf16_supported=bf16,
                        mps_available=mps, note=note)


# --- the whole check -----------------------------------------------------------------------

def check_environment() -> EnvironmentReport:
    """Check where we run and import every required and optional package (10-30 s: torch,
    lightning, peft...). Returns an EnvironmentReport; never raises an Exception."""
    packages = check_packages(REQUIRED_PACKAGES) + check_packages(OPTIONAL_PACKAGES, required=False)
    return EnvironmentReport(
        python=sys.executable, python_version=sys.version.split()[0],
        env_dir=project_env_dir(), env_exists=project_env_dir().is_dir(),
        in_project_env=running_in_project_env(), other_env_allowed=other_env_allowed(),
        packages=tuple(packages), torch=torch_summary(), ffmpeg=shutil.which("ffmpeg"))


def fix_command(problem: Problem, *, windows: bool | None = None,
                root: Path | None = None, cwd: Path | None = None) -> str:
    """The exact command that fixes `problem` on this platform (or on Windows / POSIX when
    `windows` says so). Paths are relative when `cwd` (default: the current folder) is the
    project root `root`, absolute otherwise. In an environment accepted by
    ACESTEP_ALLOW_OTHER_ENV, the package fix is pip for this interpreter."""
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
    if other_env_allowed() and not running_in_project_env():
        return f"{_quoted(sys.executable)} -m pip install -r {at('requirements.txt')}"
    return f"{script('install')}   (or: {env_python} -m pip install -r {at('requirements.txt')})"


def _is_current_folder(folder: Path, cwd: Path | None) -> bool:
    try:
        return Path(folder).resolve() == (Path(cwd) if cwd is not None else Path.cwd()).resolve()
    except OSError:  # the current folder was deleted
        return False


def _quoted(text: str) -> str:
    return f'"{text}"' if " " in text else text


def explain_problem(problem: Problem, report: EnvironmentReport | None = None) -> str:
    """A few lines for the user: what is wrong, and the command that fixes it."""
    env_dir = report.env_dir if report else project_env_dir()
    python = report.python if report else sys.executable
    if problem is Problem.NO_PROJECT_ENV:
        what = f"The project environment {env_dir} does not exist yet."
    elif problem is Problem.OUTSIDE_PROJECT_ENV:
        what = (f"This is {python}, not the project environment {env_dir}. "
                f"(To use another environment on purpose, set {ALLOW_OTHER_ENV_VARIABLE}=1.)")
    else:
        bad = [p for p in (report.packages if report else ()) if p.required and not p.ok]
        names = ", ".join(f"{p.pip_name} ({p.state.value})" for p in bad)
        what = f"Required packages are missing or broken: {names or 'see the table'}."
    return f"ERROR: {what}\nFix: {fix_command(problem)}"


# --- printing ------------------------------------------------------------------------------

def _status_text(status: PackageStatus) -> str:
    if status.ok:
        return "ok"
    if status.state is PackageState.MISSING:
        return "MISSING" if status.required else "not installed (optional)"
    reason = status.reason or "unknown error"
    if len(reason) > _REASON_WIDTH:
        reason = reason[:_REASON_WIDTH - 3] + "..."
    return f"BROKEN: {reason}" + ("" if status.required else " (optional)")


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 1024 ** 3:.1f} GiB"


def _torch_lines(info: TorchSummary) -> list[str]:
    if info.error:
        return [f"torch: unusable ({info.error})"]
    lines = [f"torch:           {info.version}",
             f"CUDA available:  {'yes' if info.cuda_available else 'no'}"
             + (f" (CUDA {info.cuda_version})" if info.cuda_version else " (CPU-only build)")]
    if info.cuda_available:
        for index, (name, total) in enumerate(info.gpus):
            lines.append(f"GPU {index}:           {name}, {_gib(total)}")
        lines.append(f"bf16 on GPU:     {'yes' if info.bf16_supported else 'no'}")
    else:
        lines.append("GPUs:            none visible to torch")
    lines.append(f"Apple MPS:       {'yes' if info.mps_available else 'no'}")
    if info.note:
        lines.append(f"note:            {info.note}")
    return lines


def format_table(packages: Sequence[PackageStatus], torch_info: TorchSummary | None = None) -> str:
    """An aligned text table: package | version | status (ok / MISSING / BROKEN: reason), then
    the torch, CUDA and GPU lines when `torch_info` is given, then where each broken package
    was imported from."""
    rows = [("package", "version", "status")]
    rows += [(p.pip_name, p.version or "-", _status_text(p)) for p in packages]
    width_name = max(len(r[0]) for r in rows)
    width_version = max(len(r[1]) for r in rows)
    lines = [f"{r[0]:<{width_name}}  {r[1]:<{width_version}}  {r[2]}" for r in rows]
    lines.insert(1, "-" * len(max(lines, key=len)))
    for p in packages:
        if p.state is PackageState.BROKEN:
            lines.append(f"{p.pip_name}: {p.reason} (imported from {p.origin or 'unknown'})")
    if torch_info is not None:
        lines.append("")
        lines += _torch_lines(torch_info)
    return "\n".join(lines)


def format_report(report: EnvironmentReport) -> str:
    """The full text `python -m acestep.environment` prints: where, the table, the verdict."""
    if report.in_project_env:
        where = "the project environment"
    elif report.other_env_allowed:
        where = f"another environment, accepted by {ALLOW_OTHER_ENV_VARIABLE}"
    else:
        where = "NOT the project environment"
    lines = [f"Python {report.python_version} at {report.python} ({where}: {report.env_dir})", ""]
    if report.packages:
        lines += [format_table(report.packages, report.torch), ""]
    lines.append(f"ffmpeg:          {report.ffmpeg or 'not found (needed for m4a/opus input)'}")
    lines.append("")
    problem = report.problem
    lines.append("Environment OK." if problem is None else explain_problem(problem, report))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m acestep.environment`: print the report; return 0 when the trainer can run,
    1 when anything required is missing or broken or this is not the project environment."""
    parser = argparse.ArgumentParser(
        prog="python -m acestep.environment",
        description="Import every package the trainer needs and print a table of what works. "
                    "Exit status 0: ready; 1: something required is missing or broken, or this "
                    "Python is not the project's env/ (set ACESTEP_ALLOW_OTHER_ENV=1 to accept "
                    "another environment; its packages are still checked).")
    parser.parse_args(argv)
    report = check_environment()
    print(format_report(report), flush=True)
    return 0 if report.problem is None else 1


if __name__ == "__main__":
    sys.exit(main())
