"""Damaged or foreign checkpoints give a clear error naming the file and the problem."""

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from acestep.errors import CheckpointError, CheckpointNotFoundError
from acestep.models import load_acestep


@pytest.fixture
def checkpoint(tmp_path, fixture_dir) -> Path:
    """A writable copy of the fixture checkpoint."""
    folder = tmp_path / "acestep-v15-turbo"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "silence_latent.safetensors"):
        shutil.copy(fixture_dir / name, folder / name)
    return folder


def rewrite_weights(folder: Path, edit) -> None:
    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, folder / "model.safetensors")


def test_truncated_weights_file_is_named(checkpoint):
    path = checkpoint / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    # safetensors checks that the data covers the header's offsets; we name the file and the fix.
    message = r"model\.safetensors is not a readable .*truncated or damaged, download it again"
    with pytest.raises(CheckpointError, match=message):
        load_acestep(checkpoint, dtype=torch.float32)


def test_weights_file_cut_inside_its_header_is_named(checkpoint):
    path = checkpoint / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is not a readable safetensors file"):
        load_acestep(checkpoint, dtype=torch.float32)


def test_config_of_another_model_type_is_refused(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    config["model_type"] = "qwen3"
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json has model_type 'qwen3', not 'acestep'"):
        load_acestep(checkpoint)


def test_config_that_is_not_json_is_named(checkpoint):
    (checkpoint / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON"):
        load_acestep(checkpoint)


def test_missing_key_is_named(checkpoint):
    rewrite_weights(checkpoint, lambda s: s.pop("decoder.layers.2.cross_attn.k_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing key\(s\): layers\.2\.cross_attn\.to_k\.weight") as info:
        load_acestep(checkpoint)
    assert "model.safetensors" in str(info.value)


def test_extra_key_is_named(checkpoint):
    rewrite_weights(checkpoint, lambda s: s.__setitem__("decoder.layers.9.extra.weight", torch.zeros(2)))
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\): layers\.9\.extra\.weight"):
        load_acestep(checkpoint)


def test_key_outside_every_component_is_named(checkpoint):
    rewrite_weights(checkpoint, lambda s: s.__setitem__("lm_head.weight", torch.zeros(2)))
    with pytest.raises(CheckpointError, match=r"outside the ACE-Step 1\.5 model: \['lm_head\.weight'\]"):
        load_acestep(checkpoint)


def test_wrong_shape_is_named_with_both_shapes(checkpoint):
    rewrite_weights(checkpoint, lambda s: s.__setitem__("decoder.layers.0.mlp.up_proj.weight", torch.zeros(100, 64)))
    with pytest.raises(CheckpointError, match=r"layers\.0\.mlp\.up_proj\.weight is \(100, 64\), expected \(128, 64\)"):
        load_acestep(checkpoint)


def test_wrong_shape_is_caught_even_for_a_component_not_loaded(checkpoint):
    rewrite_weights(checkpoint, lambda s: s.__setitem__("tokenizer.audio_acoustic_proj.weight", torch.zeros(3, 3)))
    with pytest.raises(CheckpointError, match="audio_acoustic_proj"):
        load_acestep(checkpoint, components=("transformer",))


def test_missing_null_condition_embedding_is_an_error_not_a_zero_fallback(checkpoint):
    rewrite_weights(checkpoint, lambda s: s.pop("null_condition_emb"))
    with pytest.raises(CheckpointError, match="no 'null_condition_emb'"):
        load_acestep(checkpoint, components=("transformer",))


def test_missing_silence_latent_is_named(checkpoint):
    (checkpoint / "silence_latent.safetensors").unlink()
    with pytest.raises(CheckpointNotFoundError, match="silence_latent.pt or silence_latent.safetensors"):
        load_acestep(checkpoint)


def test_silence_latent_pt_is_read_as_plain_tensor(checkpoint):
    latent = load_file(checkpoint / "silence_latent.safetensors")["silence_latent"]
    (checkpoint / "silence_latent.safetensors").unlink()
    torch.save(latent, checkpoint / "silence_latent.pt")
    bundle = load_acestep(checkpoint, dtype=torch.float32, components=("transformer",))
    assert torch.equal(bundle.silence_latent, latent.transpose(1, 2))


class _Payload:
    """Unpickling this would run `touch <marker>`; weights_only loading must refuse it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_malicious_silence_latent_pt_is_refused_not_executed(checkpoint, tmp_path):
    marker = tmp_path / "code-ran"
    (checkpoint / "silence_latent.safetensors").unlink()
    with open(checkpoint / "silence_latent.pt", "wb") as handle:
        pickle.dump(_Payload(marker), handle, protocol=2)
    with pytest.raises(CheckpointError, match=r"silence_latent\.pt could not be read as a plain tensor file"):
        load_acestep(checkpoint)
    assert not marker.exists()


def test_silence_latent_with_wrong_channels_is_named(checkpoint):
    save_file({"silence_latent": torch.zeros(1, 32, 50)}, checkpoint / "silence_latent.safetensors")
    with pytest.raises(CheckpointError, match=r"holds \(1, 32, 50\); expected a tensor \[1, 64, frames\]"):
        load_acestep(checkpoint)


def test_sharded_weights_load_like_a_single_file(checkpoint, reference, fixture_bundle):
    state = load_file(checkpoint / "model.safetensors")
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, shard_keys in shards.items():
        save_file({k: state[k] for k in shard_keys}, checkpoint / name)
    weight_map = {k: name for name, shard_keys in shards.items() for k in shard_keys}
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (checkpoint / "model.safetensors").unlink()
    bundle = load_acestep(checkpoint, dtype=torch.float32, components=("transformer",))
    expected = fixture_bundle.transformer.state_dict()
    for name, tensor in bundle.transformer.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    (checkpoint / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"incomplete: missing model-00002-of-00002\.safetensors"):
        load_acestep(checkpoint)


def test_not_a_checkpoint_folder(tmp_path):
    (tmp_path / "songs").mkdir()
    with pytest.raises(CheckpointNotFoundError, match=r"songs is incomplete: missing config\.json, model\.safetensors"):
        load_acestep(tmp_path / "songs")
