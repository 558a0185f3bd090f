"""launch.py: flags work under a bare Python, and every environment problem stops the launch
with a message that names the fix. Runs launch.py in subprocesses, the way users start it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "launch.py"
FLAGS = ["--host", "--port", "--share-lan", "--auth", "--auth-file", "--checkpoints-dir",
         "--workspace", "--data-root", "--demo", "--check"]
CHECK_TIMEOUT = 120  # --check imports torch, lightning, peft, gradio...: 10-30 s


def _load_launch_module():
    spec = importlib.util.spec_from_file_location("launch_under_test", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


launch = _load_launch_module()


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ACESTEP_ALLOW_OTHER_ENV", "PYTHONPATH", "VIRTUAL_ENV")}
    env.update(extra)
    return env


def _run(python: str, *args: str, timeout: float = 30, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([python, str(LAUNCH), *args], cwd=ROOT, env=_clean_env(**env),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def system_python() -> str:
    """python3 from PATH with the project's env/bin taken out: a Python without our packages."""
    env_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and Path(p).resolve() != Path(env_bin).resolve())
    python = shutil.which("python3", path=path)
    if python is None:
        pytest.skip("no python3 on PATH besides the project's environment")
    prefix = subprocess.run([python, "-c", "import sys; print(sys.prefix)"],
                            capture_output=True, text=True, timeout=30).stdout.strip()
    if Path(prefix).resolve() == Path(sys.prefix).resolve():
        pytest.skip(f"{python} is the Python running the tests, not a bare one")
    return python


def _env_check_extra() -> dict[str, str]:
    """Outside the project's env/ (tests run from conda or docker), accept the current env:
    the packages are still checked fully."""
    from acestep.environment import running_in_project_env
    return {} if running_in_project_env() else {"ACESTEP_ALLOW_OTHER_ENV": "1"}


def test_help_works_with_a_bare_python_and_lists_every_flag(system_python):
    result = _run(system_python, "--help")
    assert result.returncode == 0, result.stderr
    for flag in FLAGS:
        assert flag in result.stdout
    assert "ACESTEP_ALLOW_OTHER_ENV" in result.stdout
    assert "ACESTEP_CHECKPOINTS_DIR" in result.stdout


def test_bare_python_stops_with_the_fix_command(system_python):
    result = _run(system_python)
    assert result.returncode == launch.EXIT_ENVIRONMENT
    message = result.stderr
    assert "not the project environment" in message or "does not exist" in message
    assert "start.sh" in message or "install.sh" in message


def test_broken_package_fails_the_check_naming_it_and_the_fix(tmp_path):
    fake = tmp_path / "peft"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise ImportError("simulated")\n')
    result = _run(sys.executable, "--check", timeout=CHECK_TIMEOUT,
                  PYTHONPATH=str(tmp_path), **_env_check_extra())
    assert result.returncode == 1, result.stdout + result.stderr
    peft_row = next(line for line in result.stdout.splitlines() if line.startswith("peft "))
    assert "BROKEN: ImportError: simulated" in peft_row
    assert f"imported from {fake / '__init__.py'}" in result.stdout
    assert "Required packages are missing or broken: peft (BROKEN)" in result.stdout
    assert "Fix: " in result.stdout


def test_launch_with_a_broken_package_stops_before_the_ui(tmp_path):
    fake = tmp_path / "peft"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise ImportError("simulated")\n')
    result = _run(sys.executable, "--port", "7999", timeout=CHECK_TIMEOUT,
                  PYTHONPATH=str(tmp_path), **_env_check_extra())
    assert result.returncode == launch.EXIT_ENVIRONMENT, result.stdout + result.stderr
    assert "Required packages are missing or broken: peft (BROKEN)" in result.stdout
    assert "acestep.ui" not in result.stderr  # the UI was never imported


def test_check_passes_in_the_project_environment():
    result = _run(sys.executable, "--check", timeout=CHECK_TIMEOUT, **_env_check_extra())
    assert result.returncode == 0, result.stdout + result.stderr
    for pip_name in ("torch", "gradio", "peft", "lycoris-lora", "nvidia-ml-py", "tomli-w"):
        row = next(line for line in result.stdout.splitlines() if line.startswith(pip_name + " "))
        assert row.rstrip().endswith("ok"), row
    assert "CUDA available:" in result.stdout
    assert "Environment OK." in result.stdout
    # the check imports bitsandbytes, whose optional 4-bit CPU kernel warning (CPUs with AVX512-BF16)
    # would otherwise be the first line users read when the app starts
    assert "gemm_4bit_forward" not in result.stdout + result.stderr


@pytest.mark.parametrize("args", [["--share-lan"], ["--host", "0.0.0.0"],
                                  ["--host", "192.168.1.20"]])
def test_exposing_the_ui_without_a_login_is_refused(args):
    result = _run(sys.executable, *args)
    assert result.returncode == launch.EXIT_USAGE
    assert "--auth USER:PASSWORD or --auth-file PATH" in result.stderr


# --- the flag logic itself, in process -----------------------------------------------------

def _settings(*argv: str) -> dict:
    return launch.resolve_settings(launch.build_parser().parse_args(list(argv)))


def test_defaults(monkeypatch):
    monkeypatch.delenv("ACESTEP_CHECKPOINTS_DIR", raising=False)
    monkeypatch.delenv("ACESTEP_WORKSPACE", raising=False)
    assert _settings() == {"host": "127.0.0.1", "port": 7860, "auth": None,
                           "checkpoints_dir": ROOT / "checkpoints", "workspace_dir": ROOT / "workspace",
                           "data_roots": (), "demo": False}


def test_workspace_and_data_roots(monkeypatch, tmp_path):
    monkeypatch.setenv("ACESTEP_WORKSPACE", str(tmp_path / "from-env"))
    assert _settings()["workspace_dir"] == tmp_path / "from-env"
    assert _settings("--demo")["workspace_dir"] == ROOT / "demo"  # the demo never writes into real work
    settings = _settings("--workspace", str(tmp_path / "ws"), "--data-root", str(tmp_path / "music"),
                         "--data-root", str(tmp_path / "more"))
    assert settings["workspace_dir"] == tmp_path / "ws"
    assert settings["data_roots"] == (tmp_path / "music", tmp_path / "more")


def test_share_lan_binds_all_interfaces_with_logins_from_flags_and_file(tmp_path):
    logins = tmp_path / "logins.txt"
    logins.write_text("# team\nalice:secret:with:colons\n\n bob : pw \n")
    settings = _settings("--share-lan", "--auth", "carol:pw3", "--auth-file", str(logins),
                         "--port", "8000", "--demo")
    assert settings["host"] == "0.0.0.0"
    assert settings["port"] == 8000
    assert settings["demo"] is True
    assert settings["auth"] == [("carol", "pw3"), ("alice", "secret:with:colons"),
                                ("bob", "pw")]


@pytest.mark.parametrize("content, error", [
    ("alice\n", "line 1: expected USER:PASSWORD"),
    ("# only a comment\n", "no USER:PASSWORD line"),
    ("ok:pw\n:nouser\n", "line 2: expected USER:PASSWORD"),
])
def test_bad_auth_file_names_file_and_line(tmp_path, content, error):
    logins = tmp_path / "logins.txt"
    logins.write_text(content)
    with pytest.raises(ValueError, match=error) as raised:
        _settings("--auth-file", str(logins))
    assert str(logins) in str(raised.value)


def test_unreadable_auth_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="cannot read it"):
        _settings("--auth-file", str(tmp_path / "absent.txt"))


def test_share_lan_conflicts_with_another_host():
    with pytest.raises(ValueError, match="do not combine"):
        _settings("--share-lan", "--host", "10.0.0.5", "--auth", "a:b")


def test_bad_port_is_refused():
    with pytest.raises(ValueError, match="--port 70000"):
        _settings("--port", "70000")


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("localhost", True),
                                            ("::1", True), ("0.0.0.0", False),
                                            ("192.168.1.2", False), ("myhost", False)])
def test_is_loopback(host, loopback):
    assert launch.is_loopback(host) is loopback


def test_checkpoints_dir_flag_then_variable_then_default(tmp_path, monkeypatch):
    monkeypatch.setenv("ACESTEP_CHECKPOINTS_DIR", str(tmp_path / "from-env"))
    assert _settings()["checkpoints_dir"] == tmp_path / "from-env"
    monkeypatch.chdir(tmp_path)
    assert _settings("--checkpoints-dir", "models")["checkpoints_dir"] == tmp_path / "models"


def test_no_auth_allows_the_lan_with_a_warning(capsys):
    assert _settings("--share-lan", "--no-auth")["host"] == launch.LAN_HOST
    assert "anyone who can reach port 7860 can use the app" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--no-auth contradicts --auth"):
        _settings("--share-lan", "--no-auth", "--auth", "ann:pw")
