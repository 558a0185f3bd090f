"""`acestep-trainer bug-report RUN_DIR` (acestep/environment/bug_report.py): one .zip with the environment,
the run's config, events and log tail, its folder listing and its dataset in figures; no weights, no
audio, no captions or lyrics, and the home folder written `~`."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from acestep.cli import main
from acestep.environment import PackageState, PackageStatus, TorchSummary, bug_report
from acestep.environment.report import EnvironmentReport
from acestep.jobs.store import Job, JobStore
from acestep.preprocess.manifest import Manifest, ManifestSample, write_manifest

ROOT = Path(__file__).resolve().parent.parent
SECRET_LYRICS = "my unreleased lyrics"
SECRET_CAPTION = "the caption of my private song"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A home folder of its own: Path.home() is it."""
    folder = tmp_path / "home" / "ann"
    folder.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(folder))
    monkeypatch.setenv("USERPROFILE", str(folder))
    return folder


@pytest.fixture
def environment(home, monkeypatch) -> EnvironmentReport:
    """The environment check, answered at once (the real one imports every package: 10-30 s)."""
    report = EnvironmentReport(
        python=str(home / "trainer" / "env" / "bin" / "python"), python_version="3.11.7",
        env_dir=home / "trainer" / "env", env_exists=True, in_project_env=True, other_env_allowed=False,
        packages=(PackageStatus("torch", "torch", True, PackageState.OK, "2.7.1+cu128"),),
        torch=TorchSummary(version="2.7.1+cu128", cuda_available=True, cuda_version="12.8",
                           gpus=(("NVIDIA GeForce RTX 4090", 24 * 2**30),), bf16_supported=True),
        ffmpeg="/usr/bin/ffmpeg")
    monkeypatch.setattr(bug_report, "check_environment", lambda: report)
    return report


def write_run(home: Path, name: str = "my-run", events: int = 3) -> Path:
    """A run folder as the trainer leaves it: config, events, a checkpoint, final/, a preview, and the
    web app's train job with its log; its tensors folder with a manifest of two samples."""
    tensors = home / "workspace" / "tensors" / "songs"
    manifest = Manifest(model={"checkpoint": str(home / "checkpoints" / "acestep-v15-turbo"), "variant": "turbo"},
                        settings={"max_duration": 240.0}, trigger_tag="mystyle")
    manifest.samples = [ManifestSample(id=f"s{i}", source=f"audio/private-song-{i}.flac", tensors=f"s{i}.safetensors",
                                       frames=frames, duration=frames / 25, source_hash="h", key="k",
                                       caption=SECRET_CAPTION) for i, frames in enumerate((250, 500))]
    write_manifest(tensors, manifest)
    (tensors / "s0.safetensors").write_bytes(b"\0" * 64)

    run = home / "workspace" / "runs" / name
    (run / "checkpoints" / "step-000002" / "adapter").mkdir(parents=True)
    (run / "checkpoints" / "step-000002" / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * 3000)
    (run / "checkpoints" / "step-000002" / "COMPLETE").write_text("")
    (run / "final").mkdir()
    (run / "final" / "adapter_model.safetensors").write_bytes(b"\0" * 2048)
    (run / "final" / "adapter_config.json").write_text("{}")
    (run / "previews" / "step-000002").mkdir(parents=True)
    (run / "previews" / "step-000002" / "strength-1.wav").write_bytes(b"RIFF" + b"\0" * 1020)
    (run / "previews" / "step-000002" / "strength-1.png").write_bytes(b"\x89PNG" + b"\0" * 100)
    (run / "config.toml").write_text(
        f'[data]\ntensors_dir = "{tensors.as_posix()}"\n\n[adapter]\ntype = "lora"\nrank = 4\n\n'
        f'[run]\nname = "{name}"\npreview_caption = "{SECRET_CAPTION}"\npreview_lyrics = "{SECRET_LYRICS}"\n',
        encoding="utf-8")
    lines = [{"type": "start", "step": 0, "epoch": 0, "time": 1.0}]
    lines += [{"type": "log", "step": step, "epoch": 0, "loss": 0.5} for step in range(1, events - 1)]
    lines.append({"type": "error", "step": events - 2, "message": f"cannot read {tensors / 's1.safetensors'}"})
    (run / "events.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")

    jobs = JobStore(run.parent / ".jobs")
    job = Job(id=jobs.new_id("train"), kind="train", argv=["acestep-trainer", "train"], needs_gpu=True,
              status="failed", events_path=str(run / "events.jsonl"), exit_code=1, message="error: the disk is full")
    jobs.job_dir(job.id).mkdir(parents=True)
    jobs.write(job)
    jobs.log_path(job.id).write_text(f"step 1 loss 0.5\nTraceback: {run / 'final'}\n", encoding="utf-8")
    return run


def read_zip(path: Path) -> dict[str, str]:
    with zipfile.ZipFile(path) as bundle:
        return {name: bundle.read(name).decode("utf-8") for name in bundle.namelist()}


def test_the_report_holds_the_run_without_weights_audio_private_texts_or_the_home_folder(home, environment, capsys):
    run = write_run(home)
    assert main(["bug-report", str(run)]) == 0
    out = capsys.readouterr().out
    path = run.parent / "my-run-report.zip"
    assert f"Bug report written to {path} (" in out and "KiB)" in out

    files = read_zip(path)
    assert sorted(files) == [f"my-run-report/{name}" for name in (
        "config.toml", "dataset.txt", "environment.txt", "events.jsonl", "run-folder.txt", "summary.txt",
        "train-log.txt")]
    assert not [name for name in files if name.endswith((".safetensors", ".wav", ".png", ".flac"))]
    text = "\n".join(files.values())
    assert str(home) not in text and home.as_posix() not in text
    assert SECRET_LYRICS not in text and SECRET_CAPTION not in text and "private-song" not in text

    member = {name.split("/")[1]: content for name, content in files.items()}
    assert member["environment.txt"].splitlines()[0] == "acestep-lora-trainer 0.1.0"
    assert member["environment.txt"].splitlines()[1].startswith("OS: ")
    assert "Python 3.11.7 at ~/trainer/env/bin/python (the project environment: ~/trainer/env)" in text
    assert "GPU 0:           NVIDIA GeForce RTX 4090, 24.0 GiB" in member["environment.txt"]
    assert 'tensors_dir = "~/workspace/tensors/songs"' in member["config.toml"]
    assert f'preview_lyrics = "<left out: {len(SECRET_LYRICS)} characters>"' in member["config.toml"]
    assert (run / "events.jsonl").read_text().replace(str(home), "~") == member["events.jsonl"]
    assert '"message": "cannot read ~/workspace/tensors/songs/s1.safetensors"' in member["events.jsonl"]
    assert member["train-log.txt"] == "step 1 loss 0.5\nTraceback: ~/workspace/runs/my-run/final\n"
    listing = member["run-folder.txt"].splitlines()
    assert listing[0].startswith("~/workspace/runs/my-run/  ")
    for line in ("        adapter_model.safetensors  2.9 KiB", "    adapter_model.safetensors  2.0 KiB",
                 "      strength-1.wav  1.0 KiB", "    step-000002/  1.1 KiB"):
        assert line in listing, line
    assert member["dataset.txt"].splitlines()[:4] == [
        "tensors folder: ~/workspace/tensors/songs", "format version: 1", "samples: 2 (failed: 0)",
        "total duration: 30.0 s"]
    assert '"checkpoint": "~/checkpoints/acestep-v15-turbo"' in member["dataset.txt"]
    summary = member["summary.txt"]
    assert "Run folder: ~/workspace/runs/my-run" in summary
    assert "Status: failed: error: the disk is full" in summary and ", exit code 1" in summary


def test_long_events_are_cut_to_their_last_lines(home, environment):
    run = write_run(home, events=bug_report.EVENT_LINES + 10)
    report = bug_report.write_bug_report(run)
    events = read_zip(report.path)["my-run-report/events.jsonl"].splitlines()
    assert len(events) == bug_report.EVENT_LINES
    assert events == (run / "events.jsonl").read_text().replace(str(home), "~").splitlines()[-bug_report.EVENT_LINES:]
    assert f"events.jsonl: the last {bug_report.EVENT_LINES} lines of the events (the file holds more)" in \
        read_zip(report.path)["my-run-report/summary.txt"]


def test_an_existing_file_is_never_replaced(home, environment, tmp_path, capsys):
    run = write_run(home)
    mine = run.parent / "my-run-report.zip"
    mine.write_bytes(b"not yours")
    assert main(["bug-report", str(run)]) == 0
    assert main(["bug-report", str(run)]) == 0
    assert mine.read_bytes() == b"not yours"
    assert [zipfile.is_zipfile(run.parent / f"my-run-report-{number}.zip") for number in (2, 3)] == [True, True]

    chosen = tmp_path / "out" / "bug.zip"
    assert main(["bug-report", str(run), "--output", str(chosen)]) == 0
    assert main(["bug-report", str(run), "--output", str(chosen)]) == 0
    assert zipfile.is_zipfile(chosen) and zipfile.is_zipfile(chosen.with_name("bug-2.zip"))
    assert f"Bug report written to {chosen.with_name('bug-2.zip')} (" in capsys.readouterr().out
    assert main(["bug-report", str(run), "--output", str(tmp_path / "out")]) == 0  # a folder: the default name in it
    assert zipfile.is_zipfile(tmp_path / "out" / "my-run-report.zip")
    assert main(["bug-report", str(run), "--output", str(mine / "bug.zip")]) == 1
    assert f"error: {mine} is a file, not a folder: give another --output." in capsys.readouterr().err


def test_a_relative_run_folder_is_taken_from_the_current_folder(home, environment, monkeypatch):
    run = write_run(home)
    monkeypatch.chdir(run.parent.parent)
    assert main(["bug-report", "runs/my-run/"]) == 0
    summary = read_zip(run.parent / "my-run-report.zip")["my-run-report/summary.txt"]
    assert "Run folder: ~/workspace/runs/my-run\n" in summary


def test_a_folder_that_is_not_a_run_is_refused_before_the_environment_check(home, tmp_path, monkeypatch, capsys):
    def no_check():
        raise AssertionError("the environment was checked for a folder that is not a run")

    monkeypatch.setattr(bug_report, "check_environment", no_check)
    plain = tmp_path / "songs"
    plain.mkdir()
    for folder in (plain, tmp_path / "missing"):
        assert main(["bug-report", str(folder)]) == 1
        err = capsys.readouterr().err
        assert f"error: There is no run '{folder.name}' in {tmp_path} (a folder with a config.toml)." in err
    assert not list(tmp_path.glob("*.zip"))


@pytest.mark.parametrize("text, expected", [
    ("/home/ann/runs/a", "~/runs/a"),
    ('tensors_dir = "/home/ann"', 'tensors_dir = "~"'),
    ("/home/anna/runs and /data/home/ann/x", "/home/anna/runs and /data/home/ann/x"),
    ("/home/ann.old/x", "/home/ann.old/x"),
])
def test_home_as_tilde_replaces_the_home_folder_only_as_a_whole_path(text, expected):
    assert bug_report.home_as_tilde(text, "/home/ann") == expected
    assert bug_report.home_as_tilde(text, "/") == text  # a home of / would turn every path into ~


def test_the_command_module_and_the_report_module_import_without_torch():
    code = ("import sys, acestep.cli, acestep.environment.bug_report; "
            "print(sorted(m for m in ('torch', 'gradio', 'numpy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            check=True)
    assert result.stdout.strip() == "[]"
