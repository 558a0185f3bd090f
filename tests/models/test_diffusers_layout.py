"""A checkpoint already converted to diffusers' pipeline layout loads strictly too."""

import json

import torch

from acestep.models import load_acestep, read_dit_config
from acestep.models.checkpoints import list_checkpoints
from acestep.models.load import DIFFUSERS_SUBFOLDERS


def save_diffusers_layout(bundle, folder):
    for component, sub in DIFFUSERS_SUBFOLDERS.items():
        getattr(bundle, component).save_pretrained(folder / sub, safe_serialization=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "AceStepPipeline"}))


def test_diffusers_layout_gives_the_same_model(tmp_path, fixture_bundle, reference):
    folder = tmp_path / "acestep-v15-turbo-diffusers"
    save_diffusers_layout(fixture_bundle, folder)
    bundle = load_acestep(folder, dtype=torch.float32)
    assert bundle.variant == "turbo"
    assert bundle.config.fingerprint == fixture_bundle.config.fingerprint
    assert torch.equal(bundle.silence_latent, fixture_bundle.silence_latent)
    assert torch.equal(bundle.null_condition_emb, fixture_bundle.null_condition_emb)
    with torch.no_grad():
        out = bundle.transformer(
            hidden_states=reference["decoder.in.hidden_states"], timestep=reference["decoder.in.timestep"],
            timestep_r=reference["decoder.in.timestep_r"],
            encoder_hidden_states=reference["decoder.in.encoder_hidden_states"],
            context_latents=reference["decoder.in.context_latents"]).sample
    assert (out - reference["decoder.out.velocity"]).abs().max() < 1e-5
    assert [info.variant for info in list_checkpoints(tmp_path)] == ["turbo"]


def test_diffusers_layout_with_only_the_transformer_asked(tmp_path, fixture_bundle):
    folder = tmp_path / "pipe"
    save_diffusers_layout(fixture_bundle, folder)
    bundle = load_acestep(folder, dtype=torch.float32, components=("transformer",))
    assert bundle.condition_encoder is None
    assert torch.equal(bundle.null_condition_emb, fixture_bundle.null_condition_emb)
    assert read_dit_config(folder).variant == "turbo"
