"""The offline demo's material (acestep/ui/demo.py): tiny models, four labelled songs, the dataset,
the shipped CC0 clips, and start.sh / start.bat passing their flags on to launch.py."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from acestep.audio import SAMPLE_RATE, analyze, load_audio, probe_audio
from acestep.dataset import load_dataset, read_sidecars, save_dataset, training_caption
from acestep.models.checkpoints import list_checkpoints
from acestep.ui import demo
from acestep.ui.context import Workspace

ROOT = Path(__file__).resolve().parents[2]


def expected_songs():
    """The set prepare_demo makes on this machine: rendered when it can, else the shipped clips."""
    return demo.MIDI_SONGS if demo.find_renderer() is not None else demo.CLIP_SONGS


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time."""
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture
def fresh_workspace(made, tmp_path):
    """An empty workspace holding a copy of the demo models (so no child process is needed)."""
    workspace = Workspace(tmp_path / "ws", tmp_path / "ws" / "checkpoints")
    shutil.copytree(made[0].checkpoints, workspace.checkpoints)
    return workspace


def test_prepare_demo_returns_the_paths_the_tabs_preselect(made):
    workspace, defaults, messages = made
    assert defaults == {
        "audio": workspace.audio / "demo-songs",
        "dataset": workspace.datasets / "demo.json",
        "checkpoint": "acestep-v15-turbo",
        "tensors": workspace.tensors / "demo",
        "run_name": "demo",
    }
    assert any("tiny demo models" in message for message in messages)
    assert any("demo dataset" in message for message in messages)


def test_prepare_demo_writes_complete_tiny_models(made):
    workspace = made[0]
    complete = {info.name for info in list_checkpoints(workspace.checkpoints) if info.complete}
    assert complete >= {"acestep-v15-turbo", "vae", "Qwen3-Embedding-0.6B"}


def test_demo_songs_are_four_labelled_files_of_eight_to_twelve_seconds(made):
    songs_dir = made[1]["audio"]
    songs = expected_songs()
    audio = sorted(path.name for path in songs_dir.iterdir() if not path.name.endswith(".json"))
    assert audio == sorted(song.name for song in songs) and len(audio) == 4
    for song in songs:
        samples = load_audio(songs_dir / song.name)  # decodes, resamples to 48 kHz, rejects silence
        seconds = samples.shape[1] / SAMPLE_RATE
        if songs is demo.MIDI_SONGS:
            assert samples.shape == (2, int(demo.SONG_SECONDS * SAMPLE_RATE))
        assert 7.9 <= seconds <= 12.0, (song.name, seconds)
        labels = read_sidecars(songs_dir / song.name)
        assert labels["caption"] == song.labels["caption"] and len(labels["caption"]) > 40
        assert labels["bpm"] == song.labels["bpm"] and labels["instrumental"] is True
        assert labels["timesignature"] == "4"  # "4/4" in the model's form


def test_demo_dataset_loads_with_four_tagged_samples(made):
    dataset = load_dataset(made[1]["dataset"])
    songs = {song.name: song for song in expected_songs()}
    assert dataset.name == "demo" and dataset.trigger_tag == "demo-style" and dataset.tag_position == "prepend"
    assert sorted(Path(sample.audio).name for sample in dataset.samples) == sorted(songs)
    for sample in dataset.samples:
        song = songs[Path(sample.audio).name]
        assert dataset.audio_path(sample) == made[1]["audio"] / song.name
        assert sample.instrumental and sample.bpm == song.labels["bpm"]
        assert sample.duration == pytest.approx(probe_audio(dataset.audio_path(sample)).duration)
        assert training_caption(sample, dataset.trigger_tag, dataset.tag_position) == \
            f"demo-style, {song.labels['caption']}"


def test_rendered_songs_are_real_music_at_the_labelled_tempo(made):
    if demo.find_renderer() is None:
        pytest.skip(f"fluidsynth, a soundfont or OpenMSX missing; install them: {demo.INSTALL_HINT}")
    for song in demo.MIDI_SONGS:
        path = made[1]["audio"] / song.name
        audio = load_audio(path)
        assert np.max(np.abs(audio)) == pytest.approx(10 ** (-1 / 20), abs=0.01)  # peak-normalised
        assert np.abs(audio[:, :48]).max() < np.abs(audio).max() * 0.1  # faded in, no click
        assert analyze(path).bpm == pytest.approx(song.labels["bpm"], abs=1.5)


def test_second_call_changes_nothing_and_is_fast(made):
    workspace, defaults, _ = made
    before = snapshot(workspace.root)
    messages = []
    started = time.perf_counter()
    again = demo.prepare_demo(workspace, progress=messages.append)
    elapsed = time.perf_counter() - started
    assert again == defaults and messages == []
    assert snapshot(workspace.root) == before
    assert elapsed < 2.0


def test_without_fluidsynth_the_shipped_cc0_clips_are_used(fresh_workspace, monkeypatch):
    monkeypatch.setattr(demo.shutil, "which", lambda name: None)
    messages = []
    defaults = demo.prepare_demo(fresh_workspace, progress=messages.append)
    assert not any("tiny demo models" in message for message in messages)  # the copy was complete
    assert any("CC0" in message and "apt-get install fluidsynth" in message for message in messages)
    for song in demo.CLIP_SONGS:
        copied = defaults["audio"] / song.name
        assert copied.read_bytes() == (demo.CLIPS_DIR / song.source).read_bytes()
        assert json.loads(demo.sidecar_path(copied).read_text(encoding="utf-8")) == song.labels
    dataset = load_dataset(defaults["dataset"])
    assert len(dataset.samples) == 4 and dataset.trigger_tag == "demo-style"
    assert all("Recorded" in sample.caption for sample in dataset.samples)


def test_a_complete_set_is_kept_even_when_the_renderer_appears(fresh_workspace, monkeypatch):
    songs_dir = fresh_workspace.audio / "demo-songs"
    with monkeypatch.context() as patch:
        patch.setattr(demo.shutil, "which", lambda name: None)
        assert demo.prepare_demo_songs(songs_dir) is True
    before = snapshot(songs_dir)
    monkeypatch.setattr(demo, "find_renderer", lambda: pytest.fail("must not look for a renderer"))
    assert demo.prepare_demo_songs(songs_dir) is False
    assert snapshot(songs_dir) == before


def test_a_half_set_of_the_other_kind_is_removed(tmp_path, monkeypatch):
    songs_dir = tmp_path / "demo-songs"
    songs_dir.mkdir()
    stale = songs_dir / demo.MIDI_SONGS[0].name
    stale.write_bytes(b"RIFF")
    demo.sidecar_path(stale).write_text("{}", encoding="utf-8")
    (songs_dir / "mine.txt").write_text("kept", encoding="utf-8")
    monkeypatch.setattr(demo.shutil, "which", lambda name: None)
    assert demo.prepare_demo_songs(songs_dir) is True
    assert sorted(p.name for p in songs_dir.iterdir()) == sorted(
        [s.name for s in demo.CLIP_SONGS] + [s.name + ".json" for s in demo.CLIP_SONGS] + ["mine.txt"])


def test_dataset_edits_survive_and_a_deleted_dataset_is_rebuilt(fresh_workspace, monkeypatch):
    monkeypatch.setattr(demo.shutil, "which", lambda name: None)
    path = demo.prepare_demo(fresh_workspace)["dataset"]
    dataset = load_dataset(path)
    dataset.trigger_tag = "my-tag"
    save_dataset(dataset, path)
    demo.prepare_demo(fresh_workspace)
    assert load_dataset(path).trigger_tag == "my-tag"
    path.unlink()
    demo.prepare_demo(fresh_workspace)
    assert load_dataset(path).trigger_tag == "demo-style"


def test_without_renderer_or_clips_the_error_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(demo.shutil, "which", lambda name: None)
    monkeypatch.setattr(demo, "CLIPS_DIR", tmp_path / "missing")
    with pytest.raises(demo.DemoError) as error:
        demo.prepare_demo_songs(tmp_path / "songs")
    message = str(error.value)
    assert "fluidsynth timgm6mb-soundfont openttd-openmsx" in message
    assert "loop_tabla.flac" in message and str(tmp_path / "songs") in message
    assert not (tmp_path / "songs").exists()


def test_a_failing_model_writer_is_a_clear_error(tmp_path, monkeypatch):
    failed = subprocess.CompletedProcess([], 1, "", "Traceback ...\nOSError: [Errno 28] No space left on device")
    monkeypatch.setattr(demo.subprocess, "run", lambda *args, **kwargs: failed)
    with pytest.raises(demo.DemoError, match="No space left on device") as error:
        demo.prepare_demo_checkpoints(tmp_path / "checkpoints")
    assert str(tmp_path / "checkpoints") in str(error.value) and "--check" in str(error.value)


def test_fade_ramps_both_ends_and_keeps_the_middle():
    faded = demo.fade(np.ones((2, 48_000), dtype=np.float32), 48_000)
    assert faded[0, 0] == 0.0 and faded[1, -1] == 0.0
    assert faded[0, 240] == pytest.approx(0.5, abs=0.01)  # half-way through the 10 ms fade-in
    assert np.all(faded[:, 480:36_000] == 1.0)


def test_shipped_clips_are_small_documented_cc0_loops():
    files = sorted(path.name for path in demo.CLIPS_DIR.iterdir() if path.suffix == ".flac")
    assert files == sorted(song.source for song in demo.CLIP_SONGS)
    assert sum((demo.CLIPS_DIR / name).stat().st_size for name in files) < 2_000_000
    readme = (demo.CLIPS_DIR / "README.md").read_text(encoding="utf-8")
    for name in files:
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{name}`"))
        assert "CC0" in row and "freesound.org" in row
        assert 7.9 <= probe_audio(demo.CLIPS_DIR / name).duration <= 12.0


@pytest.mark.skipif(shutil.which("bash") is None, reason="start.sh needs bash")
def test_start_sh_passes_every_argument_to_launch_py_unchanged(tmp_path):
    shutil.copy(ROOT / "start.sh", tmp_path / "start.sh")
    fake_python = tmp_path / "env" / "bin" / "python"
    fake_python.parent.mkdir(parents=True)
    fake_python.write_text('#!/bin/sh\nfor arg in "$@"; do echo "[$arg]"; done\n', encoding="utf-8")
    fake_python.chmod(0o755)
    args = ["--demo", "--auth-file", "my logins.txt", "--port", "7861"]
    out = subprocess.run(["bash", str(tmp_path / "start.sh"), *args], capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout
    assert out.splitlines() == [f"[{tmp_path / 'launch.py'}]", *(f"[{arg}]" for arg in args)]


@pytest.mark.skipif(not (ROOT / "env" / "bin" / "python").exists(), reason="no project env/ (./install.sh)")
def test_start_sh_help_lists_the_demo_flag():
    out = subprocess.run(["bash", str(ROOT / "start.sh"), "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "--demo" in out and "usage: launch.py" in out


def test_start_bat_passes_every_argument_to_launch_py():
    lines = (ROOT / "start.bat").read_text(encoding="utf-8").splitlines()
    assert any(line.strip() == '"%HERE%env\\Scripts\\python.exe" "%HERE%launch.py" %*' for line in lines)


def test_prepare_demo_keeps_model_code_out_of_the_ui_process(made):
    workspace = made[0]
    code = ("import sys; from acestep.ui.context import Workspace; from acestep.ui.demo import prepare_demo; "
            f"prepare_demo(Workspace({str(workspace.root)!r}, {str(workspace.checkpoints)!r})); "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
