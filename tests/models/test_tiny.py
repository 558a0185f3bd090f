"""The tiny checkpoints directory loads through the real loaders, with the real interfaces."""

import hashlib

import pytest
import torch

from acestep.errors import AceStepError
from acestep.models import load_acestep, load_text_encoder, load_vae
from acestep.models.tiny import write_tiny_checkpoints


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tiny_dit_loads_with_real_interfaces(tiny_checkpoints):
    bundle = load_acestep("acestep-v15-turbo", dtype=torch.float32, checkpoints_dir=tiny_checkpoints)
    assert bundle.variant == "turbo"
    assert bundle.silence_latent.shape == (1, 15000, 64)  # 600 s at 25 frames/s, like the official file
    # The silence latent is the tiny VAE's encoding of silence: after a few frames, one repeated vector.
    assert torch.equal(bundle.silence_latent[0, 100], bundle.silence_latent[0, 14999])
    config = bundle.transformer.config
    assert (config.in_channels, config.audio_acoustic_hidden_dim, config.patch_size) == (192, 64, 2)


def test_tiny_vae_gives_25_frames_per_second_of_64_channels(tiny_checkpoints):
    vae = load_vae("vae", checkpoints_dir=tiny_checkpoints)
    assert vae.config.sampling_rate == 48000
    with torch.no_grad():
        latent = vae.encode(torch.zeros(1, 2, 48000 * 2)).latent_dist.sample()
    assert latent.shape == (1, 64, 50)


def test_tiny_text_encoder_and_tokenizer(tiny_checkpoints):
    model, tokenizer = load_text_encoder(tiny_checkpoints / "Qwen3-Embedding-0.6B")
    prompt = "# Caption\nwarm jazz piano\n\n# Metas\n- bpm: 96\n<|endoftext|>\n"
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    endoftext = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert tokenizer.pad_token_id == endoftext
    assert (ids[0] == endoftext).sum() == 1  # the special token stays one token
    with torch.no_grad():
        hidden = model(input_ids=ids).last_hidden_state
    assert hidden.shape == (1, ids.shape[1], 32)  # = text_hidden_dim of the tiny DiT


def test_same_seed_writes_identical_files(tmp_path, tiny_checkpoints):
    again = write_tiny_checkpoints(tmp_path / "again")
    for name in ("acestep-v15-turbo/model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "Qwen3-Embedding-0.6B/model.safetensors", "Qwen3-Embedding-0.6B/tokenizer.json"):
        assert digest(again / name) == digest(tiny_checkpoints / name), name
    other = write_tiny_checkpoints(tmp_path / "other", seed=1)
    dit = "acestep-v15-turbo/model.safetensors"
    assert digest(other / dit) != digest(again / dit)


def test_existing_folders_are_not_overwritten_without_the_flag(tmp_path):
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "mine.txt").write_text("keep me")
    with pytest.raises(AceStepError, match="already holds vae; choose an empty folder or pass --overwrite"):
        write_tiny_checkpoints(tmp_path)
    assert (tmp_path / "vae" / "mine.txt").read_text() == "keep me"
    assert not (tmp_path / "acestep-v15-turbo").exists()
