"""Settings every test needs (no network, no telemetry), how the suite is spread over worker
processes (pytest-xdist), the reliability figures table and the shared model fixtures."""

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support import ARTIFACTS  # $ACESTEP_TEST_ARTIFACTS, default <repo>/test-artifacts

# Tests never download: a hub call must fail at once, not wait on the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

# --- worker processes (pytest-xdist; pyproject's addopts ask for `-n auto --dist loadfile`) ---
# Each test file runs whole in one worker, so its module fixtures are built once. Past 4 workers
# the suite gains little (its longest file takes minutes alone) and each worker holds its own torch.
MAX_WORKERS = 4


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: without it (`-p no:xdist`, a bare pytest) unused
def pytest_xdist_auto_num_workers(config) -> int:
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


def _share_the_cores_among_the_workers() -> None:
    """Workers side by side would each start one torch thread per core and fight over them: each
    takes its share of the cores instead (its training subprocesses inherit OMP_NUM_THREADS)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


_share_the_cores_among_the_workers()


def pytest_collection_modifyitems(items) -> None:
    """Files with slow tests first: the workers start on the long files and finish together on the
    short ones, instead of one worker taking a long file when the others are done."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the order within a file stays


# --- the reliability figures (tests/reliability/conftest.py `record`) ---
# Each report carries the figures its test recorded (under "reliability figures" in its
# user_properties), so that they reach this process from the workers; the table is printed at the
# end of the run and written to test-artifacts/reliability.md.
FIGURES_PROPERTY = "reliability figures"
_figures: dict[str, list] = {}  # area -> [what was tried, how many, what went wrong, how many]


def pytest_runtest_logreport(report) -> None:
    for name, rows in report.user_properties:
        if name != FIGURES_PROPERTY:
            continue
        for area, tried, count, failed, failures in rows:
            row = _figures.setdefault(area, [tried, 0, failed, 0])
            row[1] += count
            row[3] += failures


def figures_table() -> list[str]:
    lines = ["| area | tried | count | failed | count |", "|---|---|---|---|---|"]
    lines += [f"| {area} | {tried} | {count} | {failed} | {failures} |"
              for area, (tried, count, failed, failures) in _figures.items()]
    return lines


def pytest_terminal_summary(terminalreporter) -> None:
    if not _figures:
        return
    lines = figures_table()
    terminalreporter.section(FIGURES_PROPERTY)
    for line in lines:
        terminalreporter.write_line(line)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "reliability.md").write_text("\n".join(lines) + "\n", encoding="utf-8")

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "tiny-acestep-v15-turbo"


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    """The upstream-generated tiny turbo checkpoint (official layout) with its references."""
    return FIXTURE_DIR


@pytest.fixture(scope="session")
def reference() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE_DIR / "reference.safetensors")


@pytest.fixture(scope="session")
def fixture_bundle():
    """The fixture loaded in fp32 (references are the fp32 forward of its bf16 weights).
    Shared read-only: tests that modify a model load their own."""
    from acestep.models import load_acestep

    return load_acestep(FIXTURE_DIR, dtype=torch.float32)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> Path:
    """A tiny random checkpoints directory written by `acestep.models.tiny` (shared, read-only)."""
    from acestep.models.tiny import write_tiny_checkpoints

    return write_tiny_checkpoints(tmp_path_factory.mktemp("checkpoints"))


# --- real audio fixtures (acestep.audio) ---
# Real music from Debian packages (see shared/reference/environment.md section 4): openmsx MIDI
# songs rendered with fluidsynth and the TimGM6mb soundfont, and sonic-pi's recorded loops.

OPENMSX_DIR = Path("/usr/share/games/openttd/baseset/openmsx")
SOUNDFONT = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
SONIC_PI_DIR = Path("/usr/share/sonic-pi/samples")
REAL_AUDIO_APT = (
    "sudo apt-get install -y --no-install-recommends "
    "ffmpeg fluidsynth timgm6mb-soundfont openttd-openmsx sonic-pi-samples"
)
# The two shortest files of the set (75 s and 70 s of music), about half a second each to render.
_RENDERED_SONGS = ("train_filled_with_cash.mid", "coconut_run2.mid")
_CLIP_START_SECONDS = 10.0  # past the intros, where every instrument plays
_CLIP_SECONDS = (6.0, 12.0)
# Stereo and mono recordings, 44.1 kHz, 16-bit FLAC.
_LOOPS = ("loop_amen_full", "loop_tabla", "drum_roll", "guit_e_slide")


def _skip_without(*paths: Path) -> None:
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        pytest.skip(f"real audio sources missing ({', '.join(missing)}); install them: {REAL_AUDIO_APT}")


@pytest.fixture(scope="session")
def rendered_songs(tmp_path_factory) -> list[Path]:
    """Two whole openmsx songs rendered once per session: 48 kHz stereo 16-bit WAV, 75.2 s and
    70.5 s long (read-only; copy before changing)."""
    import shutil
    import subprocess

    midi_files = [OPENMSX_DIR / name for name in _RENDERED_SONGS]
    _skip_without(SOUNDFONT, *midi_files)
    fluidsynth = shutil.which("fluidsynth")
    if fluidsynth is None:
        pytest.skip(f"fluidsynth is not installed; install it: {REAL_AUDIO_APT}")
    out_dir = tmp_path_factory.mktemp("rendered_songs")
    rendered = []
    for midi in midi_files:
        wav = out_dir / f"{midi.stem}.wav"
        command = [fluidsynth, "-ni", "-q", "-g", "0.25", "-r", "48000", "-F", str(wav), "-T", "wav", "-O", "s16"]
        subprocess.run([*command, str(SOUNDFONT), str(midi)], check=True, capture_output=True, timeout=120)
        rendered.append(wav)
    return rendered


@pytest.fixture(scope="session")
def real_songs(rendered_songs, tmp_path_factory) -> list[Path]:
    """A 6 s and a 12 s clip of real rendered music (one from each song, starting 10 s in):
    48 kHz stereo 16-bit WAV (read-only; copy before changing)."""
    import soundfile as sf

    out_dir = tmp_path_factory.mktemp("real_songs")
    clips = []
    for song, seconds in zip(rendered_songs, _CLIP_SECONDS, strict=True):
        with sf.SoundFile(song) as source:
            source.seek(int(_CLIP_START_SECONDS * source.samplerate))
            samples = source.read(int(seconds * source.samplerate), dtype="int16", always_2d=True)
            rate = source.samplerate
        clip = out_dir / f"{song.stem}_{seconds:g}s.wav"
        sf.write(clip, samples, rate, subtype="PCM_16")
        clips.append(clip)
    return clips


@pytest.fixture(scope="session")
def real_loops() -> dict[str, Path]:
    """Recorded sonic-pi samples by name, 44.1 kHz 16-bit FLAC: loop_amen_full (stereo, 6.9 s),
    loop_tabla (stereo, 10.7 s), drum_roll (mono, 6.2 s), guit_e_slide (mono, 4.3 s)."""
    loops = {name: SONIC_PI_DIR / f"{name}.flac" for name in _LOOPS}
    _skip_without(*loops.values())
    return loops


@pytest.fixture(scope="session")
def sonic_pi_drum_loops() -> list[Path]:
    """Every recorded `loop_*.flac` of sonic-pi (17 drum and percussion loops, 44.1 kHz FLAC), by name."""
    _skip_without(SONIC_PI_DIR)
    loops = sorted(SONIC_PI_DIR.glob("loop_*.flac"))
    if not loops:
        pytest.skip(f"no loop_*.flac in {SONIC_PI_DIR}; install them: {REAL_AUDIO_APT}")
    return loops
