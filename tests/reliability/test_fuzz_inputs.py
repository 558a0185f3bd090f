"""Bad files, fuzzed: every dataset JSON, CSV, label sidecar, tensors manifest and training config
either loads or raises the project's own error (AceStepError) with a message; no other exception
escapes, and a load never changes the file it read."""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from acestep.dataset import load_dataset
from acestep.dataset.csv_metadata import read_csv_metadata
from acestep.dataset.sidecars import read_sidecars
from acestep.errors import AceStepError
from acestep.preprocess.manifest import read_manifest
from acestep.training.config import load_config

from .conftest import record

EXAMPLES = int(os.environ.get("ACESTEP_FUZZ_EXAMPLES", "120"))  # per target; a deeper trial: 1500
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

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

    strategies = [
        st.builds(replace, st.sampled_from(keys), json_values),
        st.builds(drop, st.sampled_from(keys)),
        json_values.map(lambda value: json.dumps(value, allow_nan=True).encode()),
        st.binary(max_size=200),
    ]
    if "samples" in valid:
        strategies.append(st.builds(sample_field, st.sampled_from(sorted(valid["samples"][0])), json_values))
    return st.one_of(*strategies)


def check(target: str, data: bytes, name: str, load: Callable[[Path], object]) -> None:
    """Write `data` as `name` in a fresh folder, call `load` on that path: it returns or raises
    AceStepError with a message; the file is unchanged either way. Counted in the figures table."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        escaped = 1  # until the load has returned or raised the project's error
        try:
            load(path)
            escaped = 0
        except AceStepError as error:
            escaped = 0
            assert str(error).strip(), f"{target}: an error without a message"
        finally:
            record(f"bad files: {target}", "inputs fuzzed", 1, "other exceptions escaped", escaped)
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


# --- adapter folders: adapter_config.json as `load_adapter` reads it, training_metadata.json as
# export reads it, and both as the Runs tab lists them ---

VALID_ADAPTER_CONFIG = {"peft_type": "LORA", "task_type": "FEATURE_EXTRACTION", "r": 4, "lora_alpha": 8,
                        "lora_dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
                        "bias": "none", "use_dora": False, "use_rslora": False, "rank_pattern": {},
                        "alpha_pattern": {}, "inference_mode": True}
# what training writes beside the adapter; the checkpoint by name, found in the checkpoints folder
VALID_TRAINING_METADATA = {"checkpoint": "acestep-v15-turbo", "variant": "turbo", "trigger_tag": "mystyle",
                           "adapter_type": "lora", "rank": 4, "alpha": 8.0, "step": 3, "epoch": 1,
                           "date": "2026-11-26T12:00:00"}


@dataclass
class AdapterSource:
    """What the adapter fuzzing starts from (a short repr: hypothesis prints it on failure)."""

    transformer: object = field(repr=False)
    folder: Path = field(repr=False)
    checkpoints: Path = field(repr=False)


@pytest.fixture(scope="module")
def adapter_source(tiny_checkpoints, tmp_path_factory):
    """(transformer, folder of a saved LoRA adapter, checkpoints folder) on the tiny DiT (the
    transformer is copied per input)."""
    import torch

    from acestep.models import load_acestep
    from acestep.training.adapters import add_adapter, save_adapter

    dit = tiny_checkpoints / "acestep-v15-turbo"
    transformer = load_acestep(dit, dtype=torch.float32, components=("transformer",)).transformer
    pristine = copy.deepcopy(transformer)
    adapter = add_adapter(transformer, "lora", rank=4, alpha=8.0)
    folder = save_adapter(adapter, tmp_path_factory.mktemp("adapter") / "adapter",
                          VALID_TRAINING_METADATA)
    return AdapterSource(pristine, folder, tiny_checkpoints)


def in_adapter_folder(source: Path, path: Path) -> None:
    """Put the source adapter's other files beside the fuzzed one."""
    for item in source.iterdir():
        if not (path.parent / item.name).exists():
            shutil.copy2(item, path.parent / item.name)


def runs_tab_reads(folder: Path) -> None:
    """The Runs tab's readers never raise: a damaged file is listed with what can be read."""
    from acestep.training.run_folders import adapter_kind, adapter_metadata

    assert adapter_kind(folder) in ("lora", "dora", "lokr")
    assert isinstance(adapter_metadata(folder), dict)


@FUZZ
@given(st.one_of(mutated_json(VALID_ADAPTER_CONFIG),
                 st.dictionaries(st.text(max_size=12), st.one_of(st.floats(allow_nan=True), st.integers(), st.text()),
                                 max_size=3).map(lambda p: json.dumps({**VALID_ADAPTER_CONFIG, "alpha_pattern": p,
                                                                        "rank_pattern": p}).encode())))
@example(json.dumps({**VALID_ADAPTER_CONFIG, "alpha_pattern": {"(": 2}}).encode())  # once let re.error escape
@example(json.dumps({**VALID_ADAPTER_CONFIG, "lora_alpha": float("nan")}).encode())  # once loaded as a NaN scale
def test_adapter_config(adapter_source, data):
    from acestep.export.lora import load_adapter

    transformer, source = adapter_source.transformer, adapter_source.folder

    def load(path: Path):
        in_adapter_folder(source, path)
        runs_tab_reads(path.parent)
        return load_adapter(copy.deepcopy(transformer), path.parent)

    check("adapter_config.json", data, "adapter_config.json", load)


@settings(FUZZ, max_examples=max(EXAMPLES // 4, 1))  # each input that loads is a whole export (about 0.5 s)
@given(mutated_json(VALID_TRAINING_METADATA))
@example(b"7")  # once let AttributeError escape
@example(json.dumps({**VALID_TRAINING_METADATA, "step": {"a": 1}}).encode())
def test_training_metadata_as_export_reads_it(adapter_source, data):
    from acestep.export.formats import export_adapter

    source, checkpoints = adapter_source.folder, adapter_source.checkpoints

    def load(path: Path):
        in_adapter_folder(source, path)
        runs_tab_reads(path.parent)
        return export_adapter(path.parent, path.parent / "exported", checkpoints_dir=checkpoints, verify=False)

    check("training_metadata.json", data, "training_metadata.json", load)


def test_the_unfuzzed_adapter_files_load(adapter_source, tmp_path):
    """The documents the adapter fuzzing mutates load: the fuzzing starts from a working folder."""
    from acestep.export.formats import export_adapter
    from acestep.export.lora import load_adapter

    folder = tmp_path / "adapter"
    shutil.copytree(adapter_source.folder, folder)
    (folder / "adapter_config.json").write_text(json.dumps(VALID_ADAPTER_CONFIG))
    (folder / "training_metadata.json").write_text(json.dumps(VALID_TRAINING_METADATA))
    load_adapter(copy.deepcopy(adapter_source.transformer), folder)
    result = export_adapter(folder, tmp_path / "out", checkpoints_dir=adapter_source.checkpoints)
    assert sorted(result.files) == ["comfyui", "peft"]
    assert result.files["comfyui"].name == "mystyle-step3_comfyui.safetensors"
