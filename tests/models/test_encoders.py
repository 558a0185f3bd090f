"""The VAE and text-encoder loaders refuse models that are not ACE-Step's."""

import json
import shutil

import pytest

from acestep.errors import CheckpointError
from acestep.models import load_text_encoder, load_vae


@pytest.fixture
def vae_copy(tiny_checkpoints, tmp_path):
    folder = tmp_path / "vae"
    shutil.copytree(tiny_checkpoints / "vae", folder)
    return folder


def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_stable_audio_style_vae_is_refused(vae_copy):
    edit_config(vae_copy, sampling_rate=44100, downsampling_ratios=[2, 4, 4, 8, 8])
    with pytest.raises(CheckpointError, match="is a 44100 Hz VAE with hop 2048; ACE-Step 1.5 needs the 48000 Hz"):
        load_vae(vae_copy)


def test_other_autoencoder_class_is_refused(vae_copy):
    edit_config(vae_copy, _class_name="AutoencoderKL")
    with pytest.raises(CheckpointError, match="describes 'AutoencoderKL', not the ACE-Step AutoencoderOobleck"):
        load_vae(vae_copy)


def test_vae_weights_of_another_size_are_refused(vae_copy):
    edit_config(vae_copy, decoder_channels=16)
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_vae(vae_copy)


def test_text_encoder_of_another_family_is_refused(tiny_checkpoints, tmp_path):
    folder = tmp_path / "enc"
    shutil.copytree(tiny_checkpoints / "Qwen3-Embedding-0.6B", folder)
    edit_config(folder, model_type="llama")
    with pytest.raises(CheckpointError, match="model_type 'llama'; the text encoder must be Qwen3-Embedding-0.6B"):
        load_text_encoder(folder)


def test_vae_path_may_be_a_pipeline_folder(tiny_checkpoints, tmp_path):
    pipeline = tmp_path / "pipeline"
    shutil.copytree(tiny_checkpoints / "vae", pipeline / "vae")
    (pipeline / "model_index.json").write_text(json.dumps({"_class_name": "AceStepPipeline"}))
    assert load_vae(pipeline).config.sampling_rate == 48000
