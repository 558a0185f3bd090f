"""acestep/environment/: real imports, the project's own install, the table, and the fix
command for each situation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from acestep import environment
from acestep.environment import (PackageState, PackageStatus, Problem, TorchSummary,
                                 check_packages, check_project_install, fix_command, format_table)
from acestep.environment import location

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def broken_package(tmp_path, monkeypatch):
    """A package on sys.path whose import raises ImportError("simulated breakage")."""
    package = tmp_path / "brokenpkg"
    package.mkdir()
    (package / "__init__.py").write_text('raise ImportError("simulated breakage")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    yield package / "__init__.py"
    sys.modules.pop("brokenpkg", None)


def test_present_package_is_ok_with_its_installed_version():
    import importlib.metadata

    [status] = check_packages(["numpy"])
    assert status.state is PackageState.OK
    assert status.version == importlib.metadata.version("numpy")
    assert status.reason is None


def test_stdlib_module_is_ok_without_a_distribution():
    [status] = check_packages(["json"])
    assert status.ok


def test_nonexistent_package_is_missing():
    [status] = check_packages(["no_such_package_acestep_xyz"])
    assert status.state is PackageState.MISSING
    assert status.version is None


def test_package_raising_on_import_is_broken_with_reason_and_origin(broken_package):
    [status] = check_packages(["brokenpkg"])
    assert status.state is PackageState.BROKEN
    assert status.reason == "ImportError: simulated breakage"
    assert status.origin == str(broken_package)


def test_missing_dependency_inside_a_package_counts_as_broken(tmp_path, monkeypatch):
    package = tmp_path / "needsdep"
    package.mkdir()
    (package / "__init__.py").write_text("import no_such_dependency_acestep_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    [status] = check_packages(["needsdep"])
    assert status.state is PackageState.BROKEN
    assert "no_such_dependency_acestep_xyz" in status.reason


def test_pip_names_come_from_the_package_tables():
    statuses = check_packages(["tomli_w", "no_such_package_acestep_xyz"])
    assert [s.pip_name for s in statuses] == ["tomli-w", "no_such_package_acestep_xyz"]
    assert environment.REQUIRED_PACKAGES["pynvml"] == "nvidia-ml-py"
    assert environment.REQUIRED_PACKAGES["lycoris"] == "lycoris-lora"
    assert set(environment.OPTIONAL_PACKAGES) == {"bitsandbytes", "torchao", "flash_attn"}


def test_format_table_lists_names_versions_and_statuses(broken_package):
    statuses = check_packages(["json", "no_such_package_acestep_xyz", "brokenpkg"])
    statuses.append(PackageStatus("torchao", "torchao", False, PackageState.MISSING))
    table = format_table(statuses)
    lines = table.splitlines()
    assert lines[0].split() == ["package", "version", "status"]
    row = {line.split()[0]: line for line in lines[2:6]}
    assert row["json"].rstrip().endswith("ok")
    assert row["no_such_package_acestep_xyz"].rstrip().endswith("MISSING")
    assert "BROKEN: ImportError: simulated breakage" in row["brokenpkg"]
    assert "not installed (optional)" in row["torchao"]
    # aligned: the status column starts at the same place on every row
    statuses_in_order = ["ok", "MISSING", "BROKEN", "not"]
    starts = {line.index(word) for line, word in zip(lines[2:6], statuses_in_order, strict=True)}
    assert len(starts) == 1
    assert f"brokenpkg: ImportError: simulated breakage (imported from {broken_package})" in table


def test_format_table_shows_gpus_and_precision():
    gpu = TorchSummary(version="2.13.0+cu128", cuda_available=True, cuda_version="12.8",
                       gpus=(("NVIDIA H100", 80 * 1024 ** 3),), bf16_supported=True)
    table = format_table([], gpu)
    assert "2.13.0+cu128" in table
    assert "yes (CUDA 12.8)" in table
    assert "GPU 0:" in table and "NVIDIA H100, 80.0 GiB" in table
    assert "bf16 on GPU:     yes" in table
    broken = format_table([], TorchSummary(error="OSError: libcudart.so.13: cannot open"))
    assert "torch: unusable (OSError: libcudart.so.13: cannot open)" in broken


def test_torch_summary_describes_the_installed_torch():
    torch = pytest.importorskip("torch")
    summary = environment.torch_summary()
    assert summary.error is None
    assert summary.version == str(torch.__version__)
    assert summary.cuda_available == torch.cuda.is_available()
    assert len(summary.gpus) == (torch.cuda.device_count() if summary.cuda_available else 0)


@pytest.mark.parametrize("problem, windows, expected", [
    (Problem.NO_PROJECT_ENV, False, "./install.sh"),
    (Problem.NO_PROJECT_ENV, True, "install.bat"),
    (Problem.OUTSIDE_PROJECT_ENV, False, "./start.sh   (or: env/bin/python launch.py)"),
    (Problem.OUTSIDE_PROJECT_ENV, True, r"start.bat   (or: env\Scripts\python launch.py)"),
    (Problem.PACKAGES, False,
     "./install.sh   (or: env/bin/python -m pip install -r requirements.txt -e .)"),
    (Problem.PACKAGES, True,
     r"install.bat   (or: env\Scripts\python -m pip install -r requirements.txt -e .)"),
])
def test_fix_command_depends_on_problem_and_platform(problem, windows, expected, monkeypatch):
    monkeypatch.delenv(environment.ALLOW_OTHER_ENV_VARIABLE, raising=False)
    assert fix_command(problem, windows=windows, root=ROOT, cwd=ROOT) == expected


def test_fix_command_uses_absolute_paths_outside_the_project(tmp_path, monkeypatch):
    monkeypatch.delenv(environment.ALLOW_OTHER_ENV_VARIABLE, raising=False)
    root = tmp_path / "my trainer"
    root.mkdir()
    command = fix_command(Problem.OUTSIDE_PROJECT_ENV, windows=False, root=root, cwd=tmp_path)
    assert command == f'"{root}/start.sh"   (or: "{root}/env/bin/python" "{root}/launch.py")'


def test_fix_command_in_an_accepted_other_env_is_pip_for_this_python(monkeypatch):
    monkeypatch.setenv(environment.ALLOW_OTHER_ENV_VARIABLE, "1")
    monkeypatch.setattr(location, "running_in_project_env", lambda: False)
    command = fix_command(Problem.PACKAGES, windows=False, root=ROOT, cwd=ROOT)
    assert command == f"{sys.executable} -m pip install -r requirements.txt -e ."


def _fake_distribution(site, version="9.9.9", direct_url=None):
    """A `<name>.dist-info` in `site` (PEP 610 direct_url.json when given)."""
    info = site / f"acestep_fake_trainer-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: acestep-fake-trainer\nVersion: {version}\n")
    if direct_url is not None:
        (info / "direct_url.json").write_text(json.dumps(direct_url))


def test_project_installed_editable_from_here_is_ok(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, direct_url={"url": ROOT.as_uri(), "dir_info": {"editable": True}})
    monkeypatch.syspath_prepend(str(tmp_path))
    status = check_project_install(ROOT, "acestep-fake-trainer")
    assert (status.state, status.version, status.required) == (PackageState.OK, "9.9.9", True)


def test_project_editable_install_is_found_behind_a_build_leftover(tmp_path, monkeypatch):
    """Run from the project folder, the .egg-info the build leaves there comes first."""
    _fake_distribution(tmp_path / "project")  # a copy-like leftover, first on sys.path
    _fake_distribution(tmp_path / "site",
                       direct_url={"url": ROOT.as_uri(), "dir_info": {"editable": True}})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.syspath_prepend(str(tmp_path / "project"))
    assert check_project_install(ROOT, "acestep-fake-trainer").state is PackageState.OK


def test_project_installed_from_another_folder_is_broken(tmp_path, monkeypatch):
    other = tmp_path / "old clone"
    other.mkdir()
    _fake_distribution(tmp_path / "site",
                       direct_url={"url": other.as_uri(), "dir_info": {"editable": True}})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    status = check_project_install(ROOT, "acestep-fake-trainer")
    assert status.state is PackageState.BROKEN
    assert status.reason == f"installed from {other}, not from {ROOT}"


def test_project_installed_as_a_copy_is_broken(tmp_path, monkeypatch):
    _fake_distribution(tmp_path)  # no direct_url.json: a plain `pip install .`
    monkeypatch.syspath_prepend(str(tmp_path))
    status = check_project_install(ROOT, "acestep-fake-trainer")
    assert status.state is PackageState.BROKEN
    assert "not editable" in status.reason


def test_project_not_installed_is_missing():
    status = check_project_install(ROOT, "acestep-not-installed-xyz")
    assert status.state is PackageState.MISSING


def _report(**changes) -> environment.EnvironmentReport:
    fields = dict(python="/usr/bin/python3", python_version="3.11.2", env_dir=ROOT / "env",
                  env_exists=True, in_project_env=True, other_env_allowed=False,
                  packages=(PackageStatus("numpy", "numpy", True, PackageState.OK, "2.4.6"),))
    fields.update(changes)
    return environment.EnvironmentReport(**fields)


def test_report_problem_follows_location_then_packages():
    missing = (PackageStatus("peft", "peft", True, PackageState.MISSING),)
    optional = (PackageStatus("torchao", "torchao", False, PackageState.MISSING),)
    assert _report().problem is None
    assert _report(packages=optional).problem is None
    assert _report(packages=missing).problem is Problem.PACKAGES
    assert _report(in_project_env=False).problem is Problem.OUTSIDE_PROJECT_ENV
    assert _report(in_project_env=False, env_exists=False).problem is Problem.NO_PROJECT_ENV
    assert _report(in_project_env=False, other_env_allowed=True).problem is None
    assert (_report(in_project_env=False, other_env_allowed=True, packages=missing).problem
            is Problem.PACKAGES)


def test_format_report_names_the_problem_and_the_fix():
    missing = (PackageStatus("peft", "peft", True, PackageState.MISSING),)
    text = environment.format_report(_report(packages=missing))
    assert "Required packages are missing or broken: peft (MISSING)" in text
    assert "Fix: " in text and "install.sh" in text.split("Fix: ")[1]
    assert "Environment OK." in environment.format_report(_report())


@pytest.mark.parametrize("value, allowed", [("1", True), ("yes", True), ("", False), ("0", False)])
def test_allow_other_env_variable(value, allowed, monkeypatch):
    monkeypatch.setenv(environment.ALLOW_OTHER_ENV_VARIABLE, value)
    assert environment.other_env_allowed() is allowed


def test_project_paths():
    assert environment.project_root() == ROOT
    assert location.project_root() == ROOT
    assert (environment.project_root() / "launch.py").is_file()
    assert environment.project_env_dir() == ROOT / "env"


def test_module_imports_only_the_standard_library():
    """launch.py imports it under a bare Python: importing it must not pull in any package."""
    code = ("import sys; before = set(sys.modules); import acestep.environment; "
            "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
            "third = sorted(m for m in new if m not in sys.stdlib_module_names "
            "and m not in ('acestep', '_distutils_hack')); print(third)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"
