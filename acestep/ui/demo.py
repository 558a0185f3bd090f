"""The offline demo's material: tiny models, four short labelled songs, and a dataset over them.

    defaults = prepare_demo(workspace, progress=print)
    # {"audio": <ws>/audio/demo-songs, "dataset": <ws>/datasets/demo.json,
    #  "checkpoint": "acestep-v15-turbo", "tensors": <ws>/tensors/demo, "run_name": "demo"}

The songs are 10 s from four blues songs of OpenMSX (Debian `openttd-openmsx`, GPL-2), rendered
on this computer with fluidsynth and a General MIDI soundfont when all of them are installed;
otherwise the four CC0 percussion loops shipped in `demo_audio/` (cut from Sonic Pi's samples,
see its README) are copied. Rendered music is never shipped, only made locally. Each song gets a
`<song>.json` sidecar with labels written from the MIDI score or the recording (instruments,
tempo, key), so the dataset needs no captioner.

Every step is skipped when its result is already there, so a second call changes nothing and
returns at once. The models are written by `acestep-trainer tiny-checkpoint` in a child process:
torch never loads into the UI.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acestep.errors import AceStepError
from acestep.ui.context import Workspace

DEMO_CHECKPOINT = "acestep-v15-turbo"
DEMO_MODELS = (DEMO_CHECKPOINT, "vae", "Qwen3-Embedding-0.6B")  # what `tiny-checkpoint` writes
SONGS_FOLDER = "demo-songs"
DATASET_FILE = "demo.json"
DATASET_NAME = "demo"
TRIGGER_TAG = "demo-style"
RUN_NAME = "demo"

OPENMSX_DIR = Path("/usr/share/games/openttd/baseset/openmsx")
SOUNDFONTS = (Path("/usr/share/sounds/sf2/TimGM6mb.sf2"), Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),
              Path("/usr/share/sounds/sf2/default-GM.sf2"))
CLIPS_DIR = Path(__file__).resolve().parent / "demo_audio"
INSTALL_HINT = ("sudo apt-get install fluidsynth timgm6mb-soundfont openttd-openmsx "
                "(Debian/Ubuntu; other systems: fluidsynth, a General MIDI .sf2 and the OpenMSX .mid files)")

SONG_SECONDS = 10.0
SAMPLE_RATE = 48_000
FLUIDSYNTH_GAIN = "0.25"  # 0.4 clips on some openmsx songs; the clip is peak-normalised afterwards
RENDER_TIMEOUT = 300
FADE_IN_SECONDS, FADE_OUT_SECONDS = 0.01, 0.25  # no click where the cut falls inside a note

Progress = Callable[[str], None]


class DemoError(AceStepError):
    """The demo's models, songs or dataset cannot be made; the message names the fix."""


@dataclass(frozen=True)
class DemoSong:
    """One demo song: its file in demo-songs/, what it is made from (a MIDI file of OpenMSX or a
    clip in demo_audio/), where the 10 s cut starts (MIDI only), and its sidecar labels."""

    name: str
    source: str
    labels: dict[str, Any]
    start: float = 0.0


def _bars(count: int, bpm: float, beats: int = 4) -> float:
    """Seconds of `count` bars: the cut starts on a downbeat, past the intro."""
    return count * beats * 60.0 / bpm


# Labels from the MIDI files: instruments from the General MIDI programs, tempo and key from the
# tempo and key-signature events (the tempo matches acestep.audio.analyze on the renders; the
# chord roots bar by bar show the twelve-bar forms; swing from the off-beat note positions).
_RENDERED = "rendered from its MIDI score with fluidsynth and a General MIDI soundfont"
MIDI_SONGS = (
    DemoSong("city-blues.wav", "city_blues_redfarn.mid", {
        "caption": "Twelve-bar blues in G at a steady 120 BPM: honky-tonk piano and bright acoustic piano "
                   "over two steel-string acoustic guitars and a drum kit, General MIDI sounds",
        "genre": "blues, piano, acoustic guitar, instrumental",
        "bpm": 120, "keyscale": "G major", "timesignature": "4/4", "instrumental": True,
        "source": f"'City Blues' by Redfarn, OpenMSX 0.4.2 (GPL-2), {_RENDERED}",
    }, start=_bars(4, 120)),
    DemoSong("mosey-along.wav", "mosey_along_redfarn.mid", {
        "caption": "Easy-going, blues-flavoured swing tune at 140 BPM: two bright acoustic pianos and two jazz "
                   "electric guitars with a drum kit, General MIDI sounds",
        "genre": "swing, blues, piano, jazz guitar, instrumental",
        "bpm": 140, "keyscale": "C major", "timesignature": "4/4", "instrumental": True,
        "source": f"'Mosey Along' by Redfarn, OpenMSX 0.4.2 (GPL-2), {_RENDERED}",
    }, start=_bars(4, 140)),
    DemoSong("slow-and-easy.wav", "slow_neasy_redfarn.mid", {
        "caption": "Laid-back swung piano tune at 135 BPM: bright acoustic piano, music box, slap bass and "
                   "drums, General MIDI sounds",
        "genre": "jazz, swing, piano, instrumental",
        "bpm": 135, "keyscale": "F major", "timesignature": "4/4", "instrumental": True,
        "source": f"'Slow and Easy' by Redfarn, OpenMSX 0.4.2 (GPL-2), {_RENDERED}",
    }, start=_bars(4, 135)),
    DemoSong("no-work-song.wav", "no_work_song_redfarn.mid", {
        "caption": "Minor-key twelve-bar blues at 110 BPM: honky-tonk piano and grand piano, jazz electric "
                   "guitar, fretless bass and drums, General MIDI sounds",
        "genre": "blues, piano, jazz guitar, instrumental",
        "bpm": 110, "keyscale": "C minor", "timesignature": "4/4", "instrumental": True,
        "source": f"'No Work Song' by Redfarn, OpenMSX 0.4.2 (GPL-2), {_RENDERED}",
    }, start=_bars(4, 110)),
)

# Labels from the recordings: tempo from acestep.audio.analyze, 16 beats per loop; sounds from
# their spectrograms and the sample names. No key: they are drums.
_SONIC_PI = "Sonic Pi samples 3.2.2 (Debian sonic-pi-samples), CC0; mono 32 kHz FLAC"
CLIP_SONGS = (
    DemoSong("loop_garzul.flac", "loop_garzul.flac", {
        "caption": "Recorded drum loop at 120 BPM: punchy drum hits with crisp, bright highs in a steady "
                   "groove, no melody",
        "genre": "drum loop, percussion, instrumental", "bpm": 120, "timesignature": "4/4",
        "instrumental": True,
        "source": f"loop_garzul by Garzul, freesound.org/people/Garzul/sounds/213524, {_SONIC_PI}",
    }),
    DemoSong("loop_mika.flac", "loop_mika.flac", {
        "caption": "Recorded drum loop at 120 BPM: a dense, driving beat with a heavy low end, no melody",
        "genre": "drum loop, percussion, instrumental", "bpm": 120, "timesignature": "4/4",
        "instrumental": True,
        "source": f"loop_mika by mika55, freesound.org/people/mika55/sounds/188551, {_SONIC_PI}",
    }),
    DemoSong("loop_safari.flac", "loop_safari.flac", {
        "caption": "Recorded percussion loop at 120 BPM: deep drum hits in a busy, rolling pattern, "
                   "no melody",
        "genre": "percussion loop, drums, instrumental", "bpm": 120, "timesignature": "4/4",
        "instrumental": True,
        "source": f"loop_safari by nemaavla, freesound.org/people/nemaavla/sounds/318759, {_SONIC_PI}",
    }),
    DemoSong("loop_tabla.flac", "loop_tabla.flac", {
        "caption": "Recorded tabla loop at 90 BPM: Indian hand drums, deep bass strokes answered by sharp, "
                   "ringing treble strokes, no melody",
        "genre": "tabla, indian percussion, instrumental", "bpm": 90, "timesignature": "4/4",
        "instrumental": True,
        "source": f"loop_tabla by lezaarth, freesound.org/people/lezaarth/sounds/242591, {_SONIC_PI}",
    }),
)


@dataclass(frozen=True)
class Renderer:
    """What renders the MIDI songs: the fluidsynth program, a soundfont, the OpenMSX folder."""

    fluidsynth: str
    soundfont: Path
    midi_dir: Path


def prepare_demo(workspace: Workspace, progress: Progress | None = None) -> dict[str, Any]:
    """Make the demo's models, songs and dataset in `workspace` (each only when missing) and
    return what the tabs pre-select: {"audio", "dataset", "checkpoint", "tensors", "run_name"}.
    `progress(message)` hears about each step that does work. Raises DemoError naming the fix."""
    say = progress or (lambda message: None)
    workspace.create()
    prepare_demo_checkpoints(workspace.checkpoints, say)
    songs_dir = workspace.audio / SONGS_FOLDER
    changed = prepare_demo_songs(songs_dir, say)
    dataset = prepare_demo_dataset(songs_dir, workspace.datasets / DATASET_FILE, changed, say)
    return {"audio": songs_dir, "dataset": dataset, "checkpoint": DEMO_CHECKPOINT,
            "tensors": workspace.tensors / DATASET_NAME, "run_name": RUN_NAME}


def prepare_demo_checkpoints(folder: Path, progress: Progress | None = None) -> Path:
    """Write the tiny checkpoints into `folder` unless all of DEMO_MODELS are there and complete
    (in a child process, so torch stays out of the UI). Only for a folder of demo models: the
    tiny ones replace any model of the same name. Returns `folder`; raises DemoError."""
    from acestep.models.checkpoints import list_checkpoints

    folder = Path(folder)
    ready = {info.name for info in list_checkpoints(folder) if info.complete}
    if ready.issuperset(DEMO_MODELS):
        return folder
    if progress:
        progress(f"Writing the tiny demo models to {folder} ...")
    command = [sys.executable, "-m", "acestep.cli", "tiny-checkpoint", str(folder), "--overwrite"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        detail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise DemoError(f"Could not write the demo models to {folder}: {detail}\n"
                        "Check the environment with ./start.sh --check (start.bat --check on Windows).")
    return folder


def find_renderer() -> Renderer | None:
    """fluidsynth, a soundfont and every OpenMSX song of MIDI_SONGS, or None when one is missing."""
    fluidsynth = shutil.which("fluidsynth")
    soundfont = next((path for path in SOUNDFONTS if path.is_file()), None)
    songs = all((OPENMSX_DIR / song.source).is_file() for song in MIDI_SONGS)
    if fluidsynth is None or soundfont is None or not songs:
        return None
    return Renderer(fluidsynth, soundfont, OPENMSX_DIR)


def sidecar_path(audio: Path) -> Path:
    """The labels file of a demo song: `<song>.json`, what the dataset builder reads first."""
    return audio.with_name(audio.name + ".json")


def prepare_demo_songs(folder: Path, progress: Progress | None = None) -> bool:
    """Fill `folder` with the four demo songs and their sidecars: kept when a whole set (rendered
    or shipped) is there already, else rendered (when find_renderer finds all it needs) or copied
    from the shipped clips. Returns whether anything changed. Raises DemoError naming the fix."""
    say = progress or (lambda message: None)
    folder = Path(folder)
    if any(_complete(folder, songs) for songs in (MIDI_SONGS, CLIP_SONGS)):
        return False
    renderer = find_renderer()
    if renderer is None:
        _check_clips(folder)
        say(f"fluidsynth, a General MIDI soundfont or the OpenMSX songs are missing: using the {len(CLIP_SONGS)} "
            f"CC0 percussion loops shipped with the trainer. For rendered songs: {INSTALL_HINT}")
    songs, other = (MIDI_SONGS, CLIP_SONGS) if renderer else (CLIP_SONGS, MIDI_SONGS)
    folder.mkdir(parents=True, exist_ok=True)
    for song in other:  # a half set of the other kind would end up in the dataset
        for path in (folder / song.name, sidecar_path(folder / song.name)):
            path.unlink(missing_ok=True)
    for number, song in enumerate(songs, start=1):
        target = folder / song.name
        if not target.is_file():
            say(f"Demo song {number}/{len(songs)}: {song.name}")
            if renderer is not None:
                _render(song, renderer, target)
            else:
                _copy_clip(song, target)
        if not sidecar_path(target).is_file():
            _write_sidecar(target, song.labels)
    return True


def prepare_demo_dataset(songs_dir: Path, dataset_path: Path, rebuild: bool = False,
                         progress: Progress | None = None) -> Path:
    """Build the demo dataset over `songs_dir` (trigger tag TRIGGER_TAG) and save it to
    `dataset_path`, unless `rebuild` is false and a dataset there already loads with every
    audio file present (so edits made in the app survive a restart). Returns the path."""
    from acestep.dataset import build_dataset, load_dataset, save_dataset
    from acestep.errors import DatasetError

    dataset_path = Path(dataset_path)
    if not rebuild and dataset_path.is_file():
        try:
            dataset = load_dataset(dataset_path)
        except DatasetError:
            dataset = None
        if dataset and dataset.samples and all(dataset.audio_path(s).is_file() for s in dataset.samples):
            return dataset_path
    if progress:
        progress(f"Building the demo dataset {dataset_path} ...")
    try:
        result = build_dataset(songs_dir, name=DATASET_NAME, trigger_tag=TRIGGER_TAG, all_instrumental=True)
        if result.failed:
            problems = "; ".join(f"{failure.path}: {failure.reason}" for failure in result.failed)
            raise DemoError(f"Some demo songs cannot be used ({problems}). Delete {songs_dir} and start the "
                            "demo again to make them anew.")
        return save_dataset(result.dataset, dataset_path)
    except DatasetError as error:
        raise DemoError(f"Could not make the demo dataset: {error}") from None


# --- making one song -----------------------------------------------------------------------------


def _complete(folder: Path, songs: tuple[DemoSong, ...]) -> bool:
    return all((folder / s.name).is_file() and sidecar_path(folder / s.name).is_file() for s in songs)


def _check_clips(folder: Path) -> None:
    missing = [song.source for song in CLIP_SONGS if not (CLIPS_DIR / song.source).is_file()]
    if missing:
        raise DemoError(
            f"The demo cannot make its songs: fluidsynth, a General MIDI soundfont or the OpenMSX songs are "
            f"missing, and the clips shipped with the trainer are not in {CLIPS_DIR} ({', '.join(missing)}; "
            f"reinstall the trainer from its repository). Install the renderer: {INSTALL_HINT}; "
            f"or put a few songs of your own in {folder} and start the app without --demo.")


def _copy_clip(song: DemoSong, target: Path) -> None:
    temporary = target.with_name(f".{target.name}.tmp")
    try:
        shutil.copyfile(CLIPS_DIR / song.source, temporary)
        temporary.replace(target)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise DemoError(f"Could not copy the demo clip to {target}: {error.strerror or error}") from None


def _render(song: DemoSong, renderer: Renderer, target: Path) -> None:
    """Render the whole MIDI song with fluidsynth, then keep SONG_SECONDS from `song.start`."""
    midi = renderer.midi_dir / song.source
    whole = target.with_name(f".{target.stem}.render.wav")  # hidden: never scanned as a song
    command = [renderer.fluidsynth, "-ni", "-q", "-g", FLUIDSYNTH_GAIN, "-r", str(SAMPLE_RATE), "-F", str(whole),
               "-T", "wav", "-O", "s16", str(renderer.soundfont), str(midi)]
    fix = f"Reinstall fluidsynth ({INSTALL_HINT}), or uninstall it to use the shipped CC0 clips instead."
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=RENDER_TIMEOUT)
        if result.returncode != 0 or not whole.is_file():
            detail = (result.stderr or result.stdout).strip()[-500:] or f"exit status {result.returncode}"
            raise DemoError(f"fluidsynth could not render {midi}: {detail}. {fix}")
        _write_cut(whole, song.start, target)
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as error:  # RuntimeError: libsndfile
        raise DemoError(f"fluidsynth could not render {midi} to {whole}: {error}. {fix}") from None
    finally:
        whole.unlink(missing_ok=True)


def _write_cut(whole: Path, start: float, target: Path) -> None:
    import soundfile as sf

    from acestep.audio import normalize_loudness, write_wav

    with sf.SoundFile(whole) as source:
        rate = source.samplerate
        source.seek(min(int(start * rate), source.frames))
        samples = source.read(int(SONG_SECONDS * rate), dtype="float32", always_2d=True).T
    if samples.shape[1] < int(SONG_SECONDS * rate):
        raise DemoError(f"{whole}: the rendered song is shorter than {start + SONG_SECONDS:g} s; "
                        "the OpenMSX files may be of another version")
    write_wav(target, normalize_loudness(fade(samples, rate), rate, "peak"), rate)


def fade(samples, sample_rate: int):
    """[channels, frames] audio with a linear fade-in of FADE_IN_SECONDS and fade-out of
    FADE_OUT_SECONDS (a copy), so a cut inside a note does not click."""
    import numpy as np

    out = np.array(samples, dtype=np.float32)
    fade_in = min(int(FADE_IN_SECONDS * sample_rate), out.shape[1])
    fade_out = min(int(FADE_OUT_SECONDS * sample_rate), out.shape[1])
    out[:, :fade_in] *= np.linspace(0.0, 1.0, fade_in, dtype=np.float32)
    out[:, out.shape[1] - fade_out:] *= np.linspace(1.0, 0.0, fade_out, dtype=np.float32)
    return out


def _write_sidecar(audio: Path, labels: dict[str, Any]) -> None:
    from acestep.files import write_atomically

    write_atomically(sidecar_path(audio), json.dumps(labels, indent=2, ensure_ascii=False) + "\n",
                     DemoError, "demo song labels")
