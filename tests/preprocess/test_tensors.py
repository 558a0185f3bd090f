"""The tensors directory: atomic files, a validated manifest, a reader that holds nothing."""

import gc
import json
import weakref

import pytest
import torch

from acestep.errors import PreprocessError
from acestep.preprocess.manifest import Manifest, ManifestSample, read_manifest, write_manifest
from acestep.preprocess.tensors import PreprocessedDataset, check_model_matches, write_sample


def sample_tensors(frames=10):
    return {"target_latents": torch.randn(frames, 64), "encoder_hidden_states": torch.randn(7, 32),
            "encoder_attention_mask": torch.ones(7, dtype=torch.bool)}


def make_dir(tmp_path, count=3):
    manifest = Manifest(model={"fingerprint": "f1", "weights_digest": "d1", "checkpoint": "ck", "variant": "turbo"},
                        settings={"max_duration": 240})
    for i in range(count):
        write_sample(tmp_path, f"s{i}.safetensors", sample_tensors(10 + i), {"id": f"s{i}"})
        manifest.samples.append(ManifestSample(id=f"s{i}", source=f"a/{i}.wav", tensors=f"s{i}.safetensors",
                                               frames=10 + i, duration=(10 + i) / 25, source_hash="h", key="k"))
    write_manifest(tmp_path, manifest)
    return manifest


def test_round_trip_and_no_temporary_files_left(tmp_path):
    make_dir(tmp_path)
    manifest = read_manifest(tmp_path)
    assert [s.frames for s in manifest.samples] == [10, 11, 12]
    assert json.loads((tmp_path / "manifest.json").read_text())["format_version"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    data = PreprocessedDataset(tmp_path)
    item = data[2]
    assert item["target_latents"].shape == (12, 64) and item["id"] == "s2"
    assert data.frames == [10, 11, 12]


def test_reader_keeps_no_tensors_alive(tmp_path):
    make_dir(tmp_path)
    data = PreprocessedDataset(tmp_path)
    refs = [weakref.ref(data[i]["target_latents"]) for i in range(len(data))]
    gc.collect()
    assert all(ref() is None for ref in refs)


def test_sample_file_needs_exactly_the_three_tensors(tmp_path):
    with pytest.raises(ValueError, match="exactly"):
        write_sample(tmp_path, "x.safetensors", {"target_latents": torch.zeros(2, 64)}, {})


@pytest.mark.parametrize("content, message", [
    ("{oops", "not valid JSON"),
    ("[]", "not a JSON object"),
    ('{"format_version": 99}', "format_version 99"),
    ('{"format_version": 1, "settings": {}}', "malformed"),
    ('{"format_version": 1, "model": {}, "settings": {}, "samples": [{"id": 1}]}', "malformed"),
])
def test_bad_manifest_is_named(tmp_path, content, message):
    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(PreprocessError, match=message):
        read_manifest(tmp_path)


def test_missing_manifest_says_to_preprocess(tmp_path):
    with pytest.raises(PreprocessError, match="run `acestep-trainer preprocess` first"):
        PreprocessedDataset(tmp_path)


def test_missing_tensor_file_is_named(tmp_path):
    make_dir(tmp_path)
    (tmp_path / "s1.safetensors").unlink()
    with pytest.raises(PreprocessError, match=r"lacks tensor file\(s\) its manifest lists: \['s1.safetensors'\]"):
        PreprocessedDataset(tmp_path)


def test_frames_mismatch_is_named(tmp_path):
    make_dir(tmp_path)
    write_sample(tmp_path, "s0.safetensors", sample_tensors(99), {})
    with pytest.raises(PreprocessError, match="holds 99 frames, the manifest says 10"):
        PreprocessedDataset(tmp_path)[0]


def test_tensors_of_another_checkpoint_are_refused(tmp_path):
    manifest = make_dir(tmp_path)
    check_model_matches(manifest, "f1", "d1", tmp_path)
    with pytest.raises(PreprocessError) as merged:  # same architecture, other weights: no fingerprint to show
        check_model_matches(manifest, "f1", "other", tmp_path, "/models/merged")
    assert str(merged.value) == (
        f"The tensors in {tmp_path} were made with ck (variant turbo), not with /models/merged: the same "
        "architecture but other condition-encoder weights (a fine-tuned or merged model?). Train with the "
        "checkpoint they were made with, or preprocess the dataset again with this one into another folder.")
    with pytest.raises(PreprocessError, match=r"not with /models/xl: another architecture \(config fingerprint f1, "
                                              r"not f2\)"):
        check_model_matches(manifest, "f2", "other", tmp_path, "/models/xl")
