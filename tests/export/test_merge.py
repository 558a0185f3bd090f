"""Merging an adapter into the base gives the model the adapter gives at the same strength."""

import json
import re

import pytest
import torch
from safetensors import safe_open

from acestep.export import AdapterError, load_adapter
from acestep.export.formats import verification_inputs
from acestep.inference.strength import adapter_strength
from acestep.export.merge import merge_adapter
from acestep.models import load_acestep

from .test_formats import trained_adapter


def output(transformer):
    with torch.no_grad():
        return transformer(**verification_inputs(transformer)).sample


def adapted_output(checkpoint, adapter, strength):
    transformer = load_acestep(checkpoint, dtype=torch.float32, components=("transformer",)).transformer
    load_adapter(transformer, adapter)
    transformer.eval()
    with adapter_strength(transformer, strength):
        return output(transformer)


@pytest.mark.parametrize("kind, strength", [("lora", 1.0), ("lora", 0.5), ("dora", 0.7), ("lokr", 1.0),
                                            ("lokr", 0.4)])
def test_merge_equals_the_adapter_at_that_strength(tiny_checkpoints, tmp_path, kind, strength):
    base = tiny_checkpoints / "acestep-v15-turbo"
    adapter = trained_adapter(base, tmp_path / "final", kind)
    target = adapter / "lokr_weights.safetensors" if kind == "lokr" else adapter
    merged = merge_adapter(base, target, tmp_path / "merged" / "acestep-v15-turbo-mine", strength=strength,
                           dtype="fp32", shared="skip")
    merged_model = load_acestep(merged, dtype=torch.float32, components=("transformer",)).transformer
    difference = (output(merged_model) - adapted_output(base, target, strength)).abs().max()
    assert difference <= 1e-4
    base_model = load_acestep(base, dtype=torch.float32, components=("transformer",)).transformer
    assert (output(merged_model) - output(base_model)).abs().max() > 1e-3  # the merge did something


def test_merged_folder_is_a_complete_official_checkpoint(tiny_checkpoints, tmp_path):
    base = tiny_checkpoints / "acestep-v15-turbo"
    out = tmp_path / "models" / "mine"
    merge_adapter(base, trained_adapter(base, tmp_path / "a"), out, max_shard_bytes=400_000)
    names = sorted(p.name for p in out.iterdir())
    assert "config.json" in names and "silence_latent.pt" in names and "merge_info.json" in names
    assert "model.safetensors.index.json" in names and len([n for n in names if n.startswith("model-")]) > 1
    first_shard = next(n for n in names if n.startswith("model-00001-of-"))
    with safe_open(out / first_shard, "pt") as handle:
        assert all(handle.get_slice(k).get_dtype() == "BF16" for k in handle.keys())
    bundle = load_acestep(out)  # all four components, strictly
    assert bundle.variant == "turbo"
    assert (tmp_path / "models" / "vae").is_dir() and (tmp_path / "models" / "Qwen3-Embedding-0.6B").is_dir()
    info = json.loads((out / "merge_info.json").read_text())
    assert info["strength"] == 1.0 and info["modules_merged"] == 32


def test_non_empty_output_is_refused_and_kept(tiny_checkpoints, tmp_path):
    base = tiny_checkpoints / "acestep-v15-turbo"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(AdapterError, match="not empty"):
        merge_adapter(base, trained_adapter(base, tmp_path / "a"), tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_an_overwrite_that_fails_keeps_the_earlier_merge(tiny_checkpoints, fixture_dir, tmp_path):
    from acestep.models.tiny import TINY_DIT_CONFIG, write_dit_checkpoint

    base = tiny_checkpoints / "acestep-v15-turbo"
    merged = merge_adapter(base, trained_adapter(base, tmp_path / "a"), tmp_path / "out", shared="skip")
    before = {p.name: p.read_bytes() for p in merged.iterdir()}
    deeper = tmp_path / "deep"
    config = {**TINY_DIT_CONFIG, "num_hidden_layers": 6, "num_audio_decoder_hidden_layers": 6,
              "layer_types": ["sliding_attention", "full_attention"] * 3}
    write_dit_checkpoint(deeper, config, torch.Generator().manual_seed(0), torch.zeros(1, 100, 64))
    with pytest.raises(AdapterError, match="trained for another model"):
        merge_adapter(base, trained_adapter(deeper, tmp_path / "b"), tmp_path / "out", overwrite=True, shared="skip")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_adapter_of_another_model_is_refused_and_nothing_written(tiny_checkpoints, fixture_dir, tmp_path):
    from acestep.models.tiny import TINY_DIT_CONFIG, write_dit_checkpoint

    deeper = tmp_path / "deep"
    config = {**TINY_DIT_CONFIG, "num_hidden_layers": 6, "num_audio_decoder_hidden_layers": 6,
              "layer_types": ["sliding_attention", "full_attention"] * 3}
    write_dit_checkpoint(deeper, config, torch.Generator().manual_seed(0), torch.zeros(1, 100, 64))
    adapter = trained_adapter(deeper, tmp_path / "a")  # layers 4 and 5 do not exist in the tiny model
    with pytest.raises(AdapterError, match="trained for another model"):
        merge_adapter(tiny_checkpoints / "acestep-v15-turbo", adapter, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.merging-*"))


def test_merge_without_a_checkpoint_takes_the_trained_one_or_says_what_to_give(tiny_checkpoints, tmp_path):
    from acestep.errors import CheckpointNotFoundError

    base = tiny_checkpoints / "acestep-v15-turbo"
    adapter = trained_adapter(base, tmp_path / "final")
    merged = merge_adapter(None, adapter, tmp_path / "merged" / "a", dtype="fp32", shared="skip")
    assert json.loads((merged / "merge_info.json").read_text())["base"] == str(base)
    (adapter / "training_metadata.json").unlink()  # an adapter made elsewhere does not say
    with pytest.raises(AdapterError, match="does not say which checkpoint it was trained on; give --checkpoint"):
        merge_adapter(None, adapter, tmp_path / "merged" / "b")
    (adapter / "training_metadata.json").write_text(json.dumps({"checkpoint": str(tmp_path / "gone" / "my-dit")}))
    with pytest.raises(CheckpointNotFoundError, match=r"trained on .*my-dit, which is not found.*Give --checkpoint"):
        merge_adapter(None, adapter, tmp_path / "merged" / "c")
    with pytest.raises(AdapterError, match="does not exist; give an adapter folder or file, or a run folder"):
        merge_adapter(None, tmp_path / "nothing", tmp_path / "merged" / "d")
    assert not (tmp_path / "merged" / "b").exists() and not (tmp_path / "merged" / "c").exists()


@pytest.mark.parametrize("shared", ["copy", "skip"])
def test_the_space_a_merge_needs_is_what_it_writes_and_a_short_disk_is_refused_first(
        tiny_checkpoints, tmp_path, monkeypatch, shared):
    from acestep.export import merge
    from acestep.files import folder_bytes

    base = tiny_checkpoints / "acestep-v15-turbo"
    adapter = trained_adapter(base, tmp_path / "a")
    needs = []
    monkeypatch.setattr(merge, "_check_free_space", lambda out, need: needs.append(need))
    out = merge_adapter(base, adapter, tmp_path / "models" / "mine", dtype="fp32", shared=shared)
    written = folder_bytes(tmp_path / "models")  # the merge, and the copies of vae/ and the text encoder
    [need] = needs
    assert need <= written < need + 32 * 1024, (need, written)  # on top: the JSON headers and merge_info.json
    if shared == "copy":
        assert need > folder_bytes(out) + folder_bytes(base.parent / "vae")  # the copies are counted
    monkeypatch.undo()
    monkeypatch.setattr(merge, "free_space", lambda path: need - 1)
    with pytest.raises(AdapterError, match=r"The merge writes .* into .*other, and its disk has .* free: free 1 B "
                                           r"or more, or choose a folder on another disk\. Nothing was written\."):
        merge_adapter(base, adapter, tmp_path / "elsewhere" / "other", dtype="fp32", shared=shared)
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("options, message", [
    ({"strength": float("nan")}, r"The merge strength must be a finite number \(1 = as trained, e\.g\. 0\.8\); "
                                 r"got nan\."),
    ({"strength": float("inf")}, r"The merge strength must be a finite number .*; got inf"),
    ({"strength": -float("inf")}, r"The merge strength must be a finite number .*; got -inf"),
    ({"max_shard_bytes": 0}, r"The shard size must be more than 0 bytes; got 0\."),
    ({"max_shard_bytes": -2**30}, r"The shard size must be more than 0 bytes; got -1073741824\.")])
def test_a_strength_that_is_no_number_or_a_shard_size_of_0_or_less_is_refused(tiny_checkpoints, tmp_path, options,
                                                                              message):
    """NaN or inf would write a model of NaN/inf weights (and merge_info.json no JSON reads); a
    shard size of 0 or less one shard per tensor."""
    base = tiny_checkpoints / "acestep-v15-turbo"
    adapter = trained_adapter(base, tmp_path / "a")
    with pytest.raises(AdapterError, match=message):
        merge_adapter(base, adapter, tmp_path / "models" / "mine", shared="skip", **options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # nothing written, not even the parent folder


@pytest.mark.parametrize("kind", ["lora", "dora", "lokr"])
def test_an_adapter_of_another_model_width_is_refused_naming_file_module_and_shapes(tiny_checkpoints, tmp_path,
                                                                                    kind):
    """Same module names, other shapes (an adapter trained on a wider model): refused before anything
    is written, an earlier merge in --out kept, instead of a RuntimeError from the matrix product."""
    from acestep.models.tiny import TINY_DIT_CONFIG, write_dit_checkpoint

    base = tiny_checkpoints / "acestep-v15-turbo"
    wide = tmp_path / "wide"
    write_dit_checkpoint(wide, {**TINY_DIT_CONFIG, "hidden_size": 96, "intermediate_size": 192,
                                "text_hidden_dim": 32}, torch.Generator().manual_seed(0), torch.zeros(1, 100, 64))
    adapter = trained_adapter(wide, tmp_path / "a", kind)
    file = adapter / ("lokr_weights.safetensors" if kind == "lokr" else "adapter_model.safetensors")
    target = file if kind == "lokr" else adapter
    held = {"lora": r"lora_A \[4, 96\], lora_B \[32, 4\]",
            "dora": r"lora_A \[4, 96\], lora_B \[32, 4\], lora_magnitude_vector \[32\]",
            "lokr": r"lokr_w1 \[4, 8\], lokr_w2_a \[8, 4\], lokr_w2_b \[4, 12\]"}[kind]  # 8 x 12 = 96 inputs
    pattern = (rf"{re.escape(str(file))} does not fit the model: module layers\.0\.cross_attn\.k_proj is \[32, 64\] "
               rf"in the base, and the adapter holds {held} for it: it was trained for another model \(give "
               r"--checkpoint with the one it was trained on\)\.")
    with pytest.raises(AdapterError, match=pattern):
        merge_adapter(base, target, tmp_path / "models" / "mine", shared="skip")
    assert not (tmp_path / "models").exists()
    earlier = merge_adapter(base, trained_adapter(base, tmp_path / "b", kind), tmp_path / "out", shared="skip")
    before = {p.name: p.read_bytes() for p in earlier.iterdir()}
    with pytest.raises(AdapterError, match="does not fit the model"):
        merge_adapter(base, target, tmp_path / "out", overwrite=True, shared="skip")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_lora_tensor_cut_short_is_refused_with_both_shapes(tiny_checkpoints, tmp_path):
    """The QA case: one lora_A a column short (a damaged or edited file)."""
    from safetensors.torch import load_file, save_file

    base = tiny_checkpoints / "acestep-v15-turbo"
    adapter = trained_adapter(base, tmp_path / "a")
    state = load_file(adapter / "adapter_model.safetensors")
    key = "base_model.model.layers.0.cross_attn.k_proj.lora_A.weight"
    state[key] = state[key][:, :-1].contiguous()
    save_file(state, adapter / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match=r"adapter_model\.safetensors does not fit the model: module "
                                           r"layers\.0\.cross_attn\.k_proj is \[32, 64\] in the base, and the adapter "
                                           r"holds lora_A \[4, 63\], lora_B \[32, 4\] for it: it was trained for "
                                           r"another model"):
        merge_adapter(base, adapter, tmp_path / "out", shared="skip")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_lora_and_lokr_shape_rules():
    from acestep.export.merge import lokr_shape, lora_fits

    assert lora_fits({"lora_A": (4, 64), "lora_B": (32, 4)}, (32, 64))
    assert lora_fits({"lora_A": (4, 64), "lora_B": (32, 4), "lora_magnitude_vector": (32,)}, (32, 64))
    assert not lora_fits({"lora_A": (4, 64), "lora_B": (32, 4), "lora_magnitude_vector": (64,)}, (32, 64))
    assert not lora_fits({"lora_A": (4, 64), "lora_B": (32, 8)}, (32, 64))  # ranks differ
    assert not lora_fits({"lora_A": (4, 64), "lora_B": (64, 4)}, (32, 64))
    assert not lora_fits({"lora_A": (4, 64)}, (32, 64))
    assert lokr_shape({"lokr_w1": (4, 8), "lokr_w2": (8, 8)}) == (32, 64)
    assert lokr_shape({"lokr_w1": (4, 8), "lokr_w2_a": (8, 2), "lokr_w2_b": (2, 16)}) == (32, 128)
    assert lokr_shape({"lokr_w1_a": (4, 2), "lokr_w1_b": (2, 8), "lokr_w2": (8, 8)}) == (32, 64)
    assert lokr_shape({"lokr_w1": (4, 8), "lokr_w2_a": (8, 2), "lokr_w2_b": (3, 16)}) is None
    assert lokr_shape({"lokr_w1": (4, 8)}) is None
