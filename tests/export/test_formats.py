"""Every export format loads back into the model with the trained adapter's exact output."""

import json

import pytest
import torch
from safetensors import safe_open

from acestep.export import AdapterError, load_adapter
from acestep.export.formats import adapter_output, export_adapter, remove_adapter
from acestep.models import load_acestep
from acestep.training.adapters import add_adapter, save_adapter


def trained_adapter(fixture_dir, folder, kind="lora", **options):
    """A tiny adapter with non-zero weights, saved the way training saves it."""
    transformer = load_acestep(fixture_dir, dtype=torch.float32, components=("transformer",)).transformer
    adapter = add_adapter(transformer, kind, rank=4, alpha=8, **options)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    metadata = {"checkpoint": str(fixture_dir), "variant": "turbo", "fingerprint": "f", "trigger_tag": "mystyle",
                "step": 120, "epoch": 3}
    save_adapter(adapter, folder, metadata)
    return folder


@pytest.fixture
def transformer(fixture_dir):
    return load_acestep(fixture_dir, dtype=torch.float32, components=("transformer",)).transformer


@pytest.mark.parametrize("kind, options", [("lora", {}), ("lora", {"mlp": True}), ("dora", {})])
def test_lora_and_dora_formats_round_trip(fixture_dir, tmp_path, transformer, kind, options):
    source = trained_adapter(fixture_dir, tmp_path / "final", kind, **options)
    formats = ("peft", "diffusers") if kind == "dora" else ("peft", "comfyui", "diffusers")
    result = export_adapter(source, tmp_path / "out", formats=formats)
    assert set(result.files) == set(formats)
    assert all(d <= 1e-5 for d in result.max_difference.values())
    reference = adapter_output(transformer, source)
    for path in result.files.values():
        assert (adapter_output(transformer, path) - reference).abs().max() <= 1e-5


def test_lokr_exports_as_lycoris_with_official_names(fixture_dir, tmp_path, transformer):
    source = trained_adapter(fixture_dir, tmp_path / "final", "lokr")
    result = export_adapter(source, tmp_path / "out", formats=("lycoris",))
    with safe_open(result.files["lycoris"], "pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    assert any(k.startswith("lycoris_layers_0_self_attn_q_proj.") for k in keys)
    assert not any("to_q" in k for k in keys)
    assert metadata["acestep.adapter_type"] == "lokr"
    trained = adapter_output(transformer, source / "lokr_weights.safetensors")
    assert (adapter_output(transformer, result.files["lycoris"]) - trained).abs().max() <= 1e-5


def test_every_file_carries_the_metadata(fixture_dir, tmp_path):
    result = export_adapter(trained_adapter(fixture_dir, tmp_path / "a"), tmp_path / "out", formats=("comfyui",))
    with safe_open(result.files["comfyui"], "pt") as handle:
        meta, keys = handle.metadata(), list(handle.keys())
    assert meta["acestep.trigger_tag"] == "mystyle" and meta["acestep.rank"] == "4" and meta["acestep.alpha"] == "8.0"
    assert meta["acestep.variant"] == "turbo" and meta["acestep.steps"] == "120"
    assert meta["acestep.targets"] == "k_proj,o_proj,q_proj,v_proj"
    assert "base_model.model.layers.0.self_attn.q_proj.alpha" in keys
    assert result.files["comfyui"].name == "mystyle-step120_comfyui.safetensors"


def test_official_layout_matches_the_fixture_lora(fixture_dir, tmp_path):
    result = export_adapter(trained_adapter(fixture_dir, tmp_path / "a"), tmp_path / "out", formats=("peft",))
    ours, theirs = result.files["peft"], fixture_dir / "lora"
    name = "adapter_model.safetensors"
    with safe_open(ours / name, "pt") as a, safe_open(theirs / name, "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        assert all(a.get_slice(k).get_shape() == b.get_slice(k).get_shape() for k in a.keys())
    mine, official = (json.loads((p / "adapter_config.json").read_text()) for p in (ours, theirs))
    for field in ("peft_type", "task_type", "r", "lora_alpha", "bias", "use_dora"):
        assert mine[field] == official[field]
    assert sorted(mine["target_modules"]) == sorted(official["target_modules"])


def test_diffusers_file_loads_with_diffusers_own_lora_loader(fixture_dir, tmp_path, transformer):
    from diffusers.loaders.lora_pipeline import AceStepLoraLoaderMixin

    source = trained_adapter(fixture_dir, tmp_path / "a")
    result = export_adapter(source, tmp_path / "out", formats=("diffusers",))
    reference = adapter_output(transformer, source)
    state, metadata = AceStepLoraLoaderMixin.lora_state_dict(str(result.files["diffusers"]), return_lora_metadata=True)
    AceStepLoraLoaderMixin.load_lora_into_transformer(state, transformer=transformer, metadata=metadata)
    transformer.eval()
    from acestep.export.formats import verification_inputs

    with torch.no_grad():
        theirs = transformer(**verification_inputs(transformer)).sample
    assert (theirs - reference).abs().max() <= 1e-5


def test_non_empty_output_folder_is_refused_without_overwrite(fixture_dir, tmp_path):
    source = trained_adapter(fixture_dir, tmp_path / "a")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(AdapterError, match="is not empty; choose another folder or pass --overwrite"):
        export_adapter(source, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    export_adapter(source, tmp_path / "out", overwrite=True)
    assert not (tmp_path / "out" / "keep.txt").exists()


def test_lokr_asked_as_lora_format_is_refused(fixture_dir, tmp_path):
    with pytest.raises(AdapterError, match="exports as 'lycoris' only"):
        export_adapter(trained_adapter(fixture_dir, tmp_path / "a", "lokr"), tmp_path / "out", formats=("peft",))


def test_truncated_adapter_file_is_named(fixture_dir, tmp_path, transformer):
    result = export_adapter(trained_adapter(fixture_dir, tmp_path / "a"), tmp_path / "out", formats=("comfyui",))
    path = result.files["comfyui"]
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(AdapterError, match="is damaged or not a safetensors file"):
        load_adapter(transformer, path)


def test_adapter_of_another_model_size_is_refused(tmp_path, tiny_checkpoints, fixture_dir, transformer):
    # An adapter trained on the tiny checkpoint (hidden 64, same names) against the fixture: shapes agree;
    # one for an XL-like width does not.
    from acestep.models.tiny import TINY_DIT_CONFIG, write_dit_checkpoint

    wide = tmp_path / "wide"
    write_dit_checkpoint(wide, {**TINY_DIT_CONFIG, "hidden_size": 96, "intermediate_size": 192,
                                "text_hidden_dim": 32}, torch.Generator().manual_seed(0), torch.zeros(1, 100, 64))
    source = trained_adapter(wide, tmp_path / "a")
    with pytest.raises(AdapterError, match="does not fit the model"):
        load_adapter(transformer, source)


def test_remove_adapter_restores_the_base(fixture_dir, tmp_path, transformer):
    from acestep.export.formats import verification_inputs

    with torch.no_grad():
        base = transformer(**verification_inputs(transformer)).sample
    load_adapter(transformer, trained_adapter(fixture_dir, tmp_path / "a", "lokr") / "lokr_weights.safetensors")
    remove_adapter(transformer)
    with torch.no_grad():
        assert torch.equal(transformer(**verification_inputs(transformer)).sample, base)


def test_a_full_disk_during_export_is_said_and_leaves_no_folder(fixture_dir, tmp_path, monkeypatch):
    from safetensors import SafetensorError

    from acestep.export import formats

    def disk_full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    source = trained_adapter(fixture_dir, tmp_path / "final")
    monkeypatch.setattr(formats, "save_file", disk_full)
    with pytest.raises(AdapterError, match=r"The disk is full: could not write .*out\. Nothing of this attempt"):
        export_adapter(source, tmp_path / "out", formats=("comfyui",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]  # no folder, no hidden half one


def test_an_overwrite_that_fails_keeps_the_earlier_export(fixture_dir, tmp_path, monkeypatch):
    from acestep.export import formats

    source = trained_adapter(fixture_dir, tmp_path / "final")
    earlier = export_adapter(source, tmp_path / "out", formats=("comfyui",))
    before = {p.name: p.read_bytes() for p in earlier.out_dir.iterdir()}

    def unequal(*args, **kwargs):
        raise AdapterError("the comfyui file does not reproduce the adapter")

    monkeypatch.setattr(formats, "verify_exports", unequal)
    with pytest.raises(AdapterError, match="does not reproduce"):
        export_adapter(source, tmp_path / "out", formats=("peft", "comfyui"), overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final", "out"]
    monkeypatch.undo()
    result = export_adapter(source, tmp_path / "out", formats=("peft",), overwrite=True)
    assert result.out_dir == tmp_path / "out" and result.files["peft"] == tmp_path / "out" / "peft"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["peft"]


@pytest.mark.parametrize("kind, written", [("lora", ["mystyle-step120_comfyui.safetensors", "peft"]),
                                           ("dora", ["peft"]), ("lokr", ["mystyle-step120_lycoris.safetensors"])])
def test_without_formats_each_kind_exports_to_what_it_can_be_written_as(fixture_dir, tmp_path, kind, written):
    """The defaults fit the adapter: a DoRA's is peft alone (ComfyUI's DoRA convention differs from
    PEFT's, so 'comfyui' is refused for it), as a LoKr's is lycoris."""
    from acestep.export.formats import DEFAULT_FORMATS

    result = export_adapter(trained_adapter(fixture_dir, tmp_path / "final", kind), tmp_path / "out")
    assert set(result.files) == set(DEFAULT_FORMATS[kind]) and sorted(result.max_difference) == sorted(result.files)
    assert all(difference <= 1e-5 for difference in result.max_difference.values())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == written
    if kind == "dora":
        config = json.loads((tmp_path / "out" / "peft" / "adapter_config.json").read_text())
        assert config["use_dora"] is True
        with pytest.raises(AdapterError, match="ComfyUI's DoRA convention differs from PEFT's"):
            export_adapter(tmp_path / "final", tmp_path / "other", formats=("comfyui",))
