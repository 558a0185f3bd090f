"""Settings every test needs (no network, no telemetry) and the shared model fixtures."""

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

# Tests never download: a hub call must fail at once, not wait on the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

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
