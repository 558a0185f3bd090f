"""Bad files, fuzzed: every dataset JSON, CSV, label sidecar, tensors manifest and training config
either loads or raises the project's own error (AceStepError) with a message; no other exception
escapes, and a load never changes the file it read."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from acestep.dataset import load_dataset
from acestep.dataset.csv_metadata import read_csv_metadata
from acestep.dataset.sidecars import read_sidecars
from acestep.errors import AceStepError
from acestep.preprocess.tensors import read_manifest
from acestep.training.config import load_config

EXAMPLES = 120
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
escaped: dict[str, int] = {}  # per target: inputs tried (the table printed at the end)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=25)

VALID_DATASET = {"version": 2, "name": "songs", "trigger_tag": "x", "tag_position": "prepend", "genre_ratio": 0.0,
                 "samples": [{"audio": "a.wav", "caption": "piano", "genre": "jazz", "lyrics": "", "bpm": 120,
                              "key": "C major", "time_signature": "4", "language": "en", "instrumental": True,
                              "duration": 10.0}]}
VALID_MANIFEST = {"format_version": 1, "model": {"variant": "turbo"}, "settings": {}, "trigger_tag": "",
                  "samples": [{"id": "a", "source": "a.wav", "tensors": "a.safetensors", "frames": 250,
                               "duration": 10.0, "source_hash": "0", "prompt_source": "caption"}]}
VALID_CONFIG = '[data]\ntensors_dir = "tensors"\n[optimizer]\nlr = 1e-4\nname = "adamw"\n[run]\nepochs = 10\n'


def mutated_json(valid: dict) -> st.SearchStrategy[bytes]:
    """A valid document with one field replaced by anything, or a field dropped, or pure noise."""
    keys = sorted(valid)

    def replace(key, value):
        document = json.loads(json.dumps(valid))
        document[key] = value
        return json.dumps(document, allow_nan=True).encode()

    def drop(key):
        return json.dumps({k: v for k, v in valid.items() if k != key}).encode()

    def sample_field(field, value):
        document = json.loads(json.dumps(valid))
        document["samples"][0][field] = value
        return json.dumps(document, allow_nan=True).encode()

    sample_keys = sorted(valid["samples"][0])
    return st.one_of(
        st.builds(replace, st.sampled_from(keys), json_values),
        st.builds(drop, st.sampled_from(keys)),
        st.builds(sample_field, st.sampled_from(sample_keys), json_values),
        json_values.map(lambda value: json.dumps(value, allow_nan=True).encode()),
        st.binary(max_size=200),
    )


def check(target: str, data: bytes, name: str, load: Callable[[Path], object]) -> None:
    """Write `data` as `name` in a fresh folder, call `load` on that path: it returns or raises
    AceStepError with a message; the file is unchanged either way."""
    escaped[target] = escaped.get(target, 0) + 1
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        try:
            load(path)
        except AceStepError as error:
            assert str(error).strip(), f"{target}: an error without a message"
        assert path.read_bytes() == data, f"{target}: the load changed the file"


@FUZZ
@given(mutated_json(VALID_DATASET))
def test_dataset_json(data):
    check("dataset JSON", data, "songs.json", load_dataset)


@FUZZ
@given(mutated_json(VALID_MANIFEST))
def test_tensors_manifest(data):
    check("tensors manifest", data, "manifest.json", lambda path: read_manifest(path.parent))


csv_cells = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=15)


@FUZZ
@given(st.one_of(
    st.lists(st.lists(csv_cells, min_size=1, max_size=6), min_size=1, max_size=5).map(
        lambda rows: "\n".join([",".join(["file", "caption", "bpm", "key"])] + [",".join(r) for r in rows]).encode()),
    st.binary(max_size=200)))
@example(b"file,caption,bpm,key\n\r0")  # a lone carriage return once let csv.Error escape
def test_csv_metadata(data):
    check("CSV", data, "labels.csv", lambda path: read_csv_metadata(path.parent))


@FUZZ
@given(st.one_of(json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()), st.binary(max_size=200)),
       st.sampled_from([".json", ".txt"]))
def test_label_sidecars(data, suffix):
    def load(path: Path):
        audio = path.parent / "song.wav"
        audio.write_bytes(b"")
        return read_sidecars(audio)

    check(f"sidecar {suffix}", data, "song" + suffix, load)


toml_lines = st.one_of(
    st.just("[data]"), st.just("[optimizer]"), st.just("[run]"), st.just("[adapter]"),
    st.builds(lambda k, v: f"{k} = {v}", st.sampled_from(["lr", "rank", "epochs", "tensors_dir", "name", "alpha",
                                                           "batch_size", "max_seconds", "betas", "targets", "x"]),
              st.one_of(st.integers(-5, 10**9).map(str), st.floats(allow_nan=True).map(repr),
                        st.text(max_size=10).map(json.dumps), st.just("[1, 2]"), st.just("true"), st.just("{a = 1}"))))


@FUZZ
@given(st.one_of(st.lists(toml_lines, max_size=10).map(lambda lines: (VALID_CONFIG + "\n".join(lines)).encode()),
                 st.binary(max_size=200)))
def test_training_config(data):
    check("training config", data, "run.toml", load_config)


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    if escaped:
        width = max(map(len, escaped))
        print("\nfuzzed inputs (each loaded or refused with the project's error; 0 other exceptions escaped):")
        for target, count in escaped.items():
            print(f"  {target:{width}s} {count:5d}")
