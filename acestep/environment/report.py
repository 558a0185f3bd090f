"""The whole check as a report: run it, print it as a table; `python -m acestep.environment`."""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from acestep.environment.location import (ALLOW_OTHER_ENV_VARIABLE, Problem, fix_command,
                                          other_env_allowed, problem_at, project_env_dir,
                                          project_root, running_in_project_env)
from acestep.environment.packages import (OPTIONAL_PACKAGES, REQUIRED_PACKAGES, PackageState,
                                          PackageStatus, check_packages, check_project_install)
from acestep.environment.torch_info import TorchSummary, torch_summary
from acestep.library_noise import silence_library_noise

_REASON_WIDTH = 70


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
        location = problem_at(self.env_exists, self.in_project_env, self.other_env_allowed)
        if location is not None:
            return location
        if any(p.required and not p.ok for p in self.packages):
            return Problem.PACKAGES
        return None


def check_environment() -> EnvironmentReport:
    """Check where we run, import every required and optional package (10-30 s: torch,
    lightning-fabric, peft...) and check the project's own install. Never raises an Exception."""
    packages = (check_packages(REQUIRED_PACKAGES)
                + [check_project_install(project_root())]
                + check_packages(OPTIONAL_PACKAGES, required=False))
    return EnvironmentReport(
        python=sys.executable, python_version=sys.version.split()[0],
        env_dir=project_env_dir(), env_exists=project_env_dir().is_dir(),
        in_project_env=running_in_project_env(), other_env_allowed=other_env_allowed(),
        packages=tuple(packages), torch=torch_summary(), ffmpeg=shutil.which("ffmpeg"))


def explain_problem(problem: Problem, report: EnvironmentReport | None = None) -> str:
    """Two lines for the user: 'ERROR: what is wrong' and 'Fix: the command'."""
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


def _status_text(status: PackageStatus) -> str:
    if status.ok:
        return "ok"
    if status.state is PackageState.MISSING:
        return "MISSING" if status.required else "not installed (optional)"
    reason = status.reason or "unknown error"
    if len(reason) > _REASON_WIDTH:
        reason = reason[:_REASON_WIDTH - 3] + "..."
    return f"BROKEN: {reason}" + ("" if status.required else " (optional)")


def _torch_lines(info: TorchSummary) -> list[str]:
    if info.error:
        return [f"torch: unusable ({info.error})"]
    lines = [f"torch:           {info.version}",
             f"CUDA available:  {'yes' if info.cuda_available else 'no'}"
             + (f" (CUDA {info.cuda_version})" if info.cuda_version else " (CPU-only build)")]
    if info.cuda_available:
        for index, (name, total) in enumerate(info.gpus):
            lines.append(f"GPU {index}:           {name}, {total / 1024 ** 3:.1f} GiB")
        lines.append(f"bf16 on GPU:     {'yes' if info.bf16_supported else 'no'}")
    else:
        lines.append("GPUs:            none visible to torch")
    lines.append(f"Apple MPS:       {'yes' if info.mps_available else 'no'}")
    if info.note:
        lines.append(f"note:            {info.note}")
    return lines


def format_table(packages: Sequence[PackageStatus], torch_info: TorchSummary | None = None) -> str:
    """An aligned text table: package | version | status (ok / MISSING / BROKEN: reason), then
    where each broken package was imported from, then the torch, CUDA and GPU lines when
    `torch_info` is given."""
    rows = [("package", "version", "status")]
    rows += [(p.pip_name, p.version or "-", _status_text(p)) for p in packages]
    width_name = max(len(r[0]) for r in rows)
    width_version = max(len(r[1]) for r in rows)
    lines = [f"{r[0]:<{width_name}}  {r[1]:<{width_version}}  {r[2]}" for r in rows]
    lines.insert(1, "-" * len(max(lines, key=len)))
    for p in packages:
        if p.state is PackageState.BROKEN:
            origin = f" (imported from {p.origin})" if p.origin else ""
            lines.append(f"{p.pip_name}: {p.reason}{origin}")
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
    silence_library_noise()  # before check_environment imports the packages
    report = check_environment()
    print(format_report(report), flush=True)
    return 0 if report.problem is None else 1
