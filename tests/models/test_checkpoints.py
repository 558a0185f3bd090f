"""Finding models: the checkpoints directory, names, HF ids, and what is missing."""

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from acestep.errors import CheckpointNotFoundError, DownloadError
from acestep.models import checkpoints
from acestep.models.checkpoints import (
    DIT,
    VAE,
    default_checkpoints_dir,
    download_model,
    list_checkpoints,
    official_model,
    resolve_model_path,
)


def test_list_checkpoints_reports_kind_variant_and_completeness(tiny_checkpoints, tmp_path):
    found = {info.name: info for info in list_checkpoints(tiny_checkpoints)}
    assert found["acestep-v15-turbo"].kind == DIT and found["acestep-v15-turbo"].variant == "turbo"
    assert found["vae"].kind == VAE
    assert found["Qwen3-Embedding-0.6B"].kind == "text_encoder"
    assert all(info.complete for info in found.values())


def test_variant_is_read_from_config_not_folder_name(tiny_checkpoints, tmp_path):
    renamed = tmp_path / "acestep-v15-base"  # a turbo in a folder named like base
    shutil.copytree(tiny_checkpoints / "acestep-v15-turbo", renamed)
    assert [i.variant for i in list_checkpoints(tmp_path)] == ["turbo"]


def test_incomplete_folder_lists_missing_files(tiny_checkpoints, tmp_path):
    partial = tmp_path / "acestep-v15-sft"
    partial.mkdir()
    shutil.copy(tiny_checkpoints / "acestep-v15-turbo" / "config.json", partial / "config.json")
    (info,) = list_checkpoints(tmp_path)
    assert not info.complete
    assert info.missing == ["model.safetensors", "silence_latent.pt or silence_latent.safetensors"]


def test_unknown_folders_are_skipped(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{oops")
    assert list_checkpoints(tmp_path) == []
    assert list_checkpoints(tmp_path / "does-not-exist") == []


def test_resolve_accepts_path_folder_name_and_official_hf_id(tiny_checkpoints):
    folder = tiny_checkpoints / "acestep-v15-turbo"
    assert resolve_model_path(folder, DIT) == folder
    assert resolve_model_path("acestep-v15-turbo", DIT, tiny_checkpoints) == folder
    # The turbo DiT lives in a subfolder of the main repo; its HF id maps to the same folder.
    assert resolve_model_path("ACE-Step/Ace-Step1.5/acestep-v15-turbo", DIT, tiny_checkpoints) == folder
    assert resolve_model_path("ACE-Step/Ace-Step1.5/vae", VAE, tiny_checkpoints) == tiny_checkpoints / "vae"


def test_missing_model_error_names_files_and_download_command(tmp_path):
    with pytest.raises(CheckpointNotFoundError) as info:
        resolve_model_path("acestep-v15-base", DIT, tmp_path)
    message = str(info.value)
    assert "config.json, model.safetensors, silence_latent.pt or silence_latent.safetensors" in message
    assert f"acestep-trainer download acestep-v15-base --checkpoints-dir {tmp_path}" in message
    assert "ACE-Step/acestep-v15-base" in message


def test_hf_id_of_unknown_repo_is_not_rejected_as_a_path(tmp_path):
    # An `org/name` id is an id, not a bad path: without download it is "not found", with the name.
    with pytest.raises(CheckpointNotFoundError, match="Model 'someone/my-finetune' not found"):
        resolve_model_path("someone/my-finetune", DIT, tmp_path)


def test_download_offline_raises_with_manual_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError) as info:
        download_model("vae", tmp_path)
    message = str(info.value)
    assert "ACE-Step/Ace-Step1.5/vae" in message
    assert f"hf download ACE-Step/Ace-Step1.5 --include 'vae/*' --local-dir {tmp_path}" in message


def test_download_places_subfolder_models_in_the_official_layout(tmp_path, monkeypatch):
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(kwargs["local_dir"])

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    assert download_model("vae", tmp_path) == tmp_path / "vae"
    assert download_model("acestep-v15-xl-turbo", tmp_path) == tmp_path / "acestep-v15-xl-turbo"
    assert calls[0] == ("ACE-Step/Ace-Step1.5", {"allow_patterns": ["vae/*"], "local_dir": tmp_path})
    assert calls[1] == ("ACE-Step/acestep-v15-xl-turbo", {"local_dir": tmp_path / "acestep-v15-xl-turbo"})


def test_a_full_disk_during_a_download_says_so_and_not_to_check_the_network(tmp_path, monkeypatch):
    def disk_full(repo_id, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("huggingface_hub.snapshot_download", disk_full)
    with pytest.raises(DownloadError) as info:
        download_model("acestep-v15-xl-turbo", tmp_path)
    message = str(info.value)
    assert message.startswith("The disk is full: could not download ACE-Step/acestep-v15-xl-turbo (about 19 GB) "
                              f"into {tmp_path / 'acestep-v15-xl-turbo'}. Free some space")
    assert "partial ones resume" in message and "network" not in message


def test_registry_covers_every_official_dit():
    names = {m.name for m in checkpoints.OFFICIAL_MODELS if m.kind == DIT}
    assert names == {
        "acestep-v15-turbo", "acestep-v15-base", "acestep-v15-sft", "acestep-v15-turbo-shift1",
        "acestep-v15-turbo-shift3", "acestep-v15-turbo-continuous", "acestep-v15-xl-base",
        "acestep-v15-xl-sft", "acestep-v15-xl-turbo",
    }
    assert official_model("ACE-Step/acestep-v15-sft").name == "acestep-v15-sft"
    assert official_model("ACE-Step/acestep-captioner").kind == "labeller"
    assert official_model("nobody/else") is None


def test_checkpoints_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ACESTEP_CHECKPOINTS_DIR", str(tmp_path / "models"))
    assert default_checkpoints_dir() == tmp_path / "models"
    monkeypatch.delenv("ACESTEP_CHECKPOINTS_DIR")
    monkeypatch.chdir(tmp_path)  # the working directory does not matter: the project's folder does
    assert default_checkpoints_dir() == Path(__file__).resolve().parents[2] / "checkpoints"


def test_sharded_folder_counts_as_complete_only_with_every_shard(tiny_checkpoints, tmp_path):
    folder = tmp_path / "acestep-v15-xl-base"
    shutil.copytree(tiny_checkpoints / "acestep-v15-turbo", folder)
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert checkpoints.missing_files(folder, DIT) == ["model-00002-of-00002.safetensors"]
