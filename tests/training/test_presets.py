"""Presets: every built-in file validates and trains the tiny model; auto-selection by total GPU
memory; user presets saved, listed, loaded and refused where they must be."""

import json
import math
from pathlib import Path

import pytest
import torch

from acestep.errors import ConfigError
from acestep.training.config import TrainingConfig, apply_overrides, config_to_dict, load_config
from acestep.training.loop import train
from acestep.training.presets import (
    BUILTIN_DIR,
    BUILTIN_ORDER,
    apply_named_preset,
    list_presets,
    load_preset,
    recommend_preset,
    recommendation_message,
    save_user_preset,
    user_presets_dir,
)

from .conftest import write_tensors_dir

GIB = 1024 ** 3


@pytest.fixture(autouse=True)
def user_folder(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "user-presets"
    monkeypatch.setenv("ACESTEP_PRESETS_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def tensors(tiny_dit, tmp_path_factory) -> Path:
    return write_tensors_dir(tmp_path_factory.mktemp("preset-tensors"), tiny_dit, 8)


# --- the built-in files ------------------------------------------------------------------------------


def test_every_builtin_file_is_listed_and_validates():
    files = sorted(path.stem for path in BUILTIN_DIR.glob("*.json"))
    assert files == sorted(BUILTIN_ORDER)
    presets = list_presets()
    assert [p.name for p in presets] == list(BUILTIN_ORDER)
    for preset in presets:
        assert preset.builtin and preset.path == BUILTIN_DIR / f"{preset.name}.json"
        assert len(preset.description) > 40 and preset.min_vram_gib >= 8
        config = apply_named_preset(TrainingConfig(), preset.name)
        assert config.run.best_after_epochs <= config.run.epochs  # the seed's "best after 200 of 100" bug
        assert config.adapter.type == "lora" and config.adapter.modules == []
        # every value the preset sets is explained
        set_paths = {f"{s}.{k}" for s, values in preset.config.items() if isinstance(values, dict) for k in values}
        assert set_paths == set(preset.notes), preset.name


def test_the_tiers_keep_the_seed_values_with_its_bugs_fixed():
    def config(name):
        return apply_named_preset(TrainingConfig(), name)

    big, mid, small, tiny = (config(n) for n in ("vram_24gb_plus", "vram_16gb", "vram_12gb", "vram_8gb"))
    assert (big.adapter.rank, big.adapter.alpha, big.data.batch_size, big.optimizer.gradient_accumulation) == \
        (64, 128.0, 3, 1)
    assert (mid.data.batch_size, mid.optimizer.gradient_accumulation) == (2, 2)
    for prodigy in (big, mid):  # Prodigy's lr is a multiplier of its own estimate
        assert prodigy.optimizer.name == "prodigy" and prodigy.optimizer.lr == 1.0
        assert not prodigy.run.gradient_checkpointing and prodigy.data.max_seconds == 60.0
    assert small.optimizer.name == "adamw8bit" and small.adapter.rank == 32 and small.run.gradient_checkpointing
    assert (tiny.optimizer.name, tiny.optimizer.scheduler) == ("adafactor", "constant_with_warmup")
    assert tiny.adapter.targets == "self_attention" and tiny.data.max_seconds == 40.0
    for tier in (big, mid, small, tiny):
        assert tier.run.epochs >= 800 and tier.run.best_after_epochs == 200 and tier.run.early_stopping_patience == 80


def test_the_8bit_optimizer_needs_bitsandbytes_and_the_installer_provides_it():
    requirements = (Path(__file__).resolve().parents[2] / "requirements.txt").read_text()
    assert any(line.startswith("bitsandbytes") and "darwin" in line for line in requirements.splitlines())
    import bitsandbytes  # noqa: F401  (the environment has it: the 10-12 GB tier really runs 8-bit AdamW)


@pytest.mark.parametrize("name", BUILTIN_ORDER)
def test_every_preset_trains_the_tiny_model(name, tmp_path, tensors, tiny_dit):
    config = apply_named_preset(TrainingConfig(), name)
    config = apply_overrides(config, [f"data.tensors_dir={tensors}", f"model.checkpoint={tiny_dit}",
                                      f"run.output_dir={tmp_path / 'runs'}", f"run.name={name}", "run.max_steps=2",
                                      "run.accelerator=cpu", "run.log_every_steps=1"])
    result = train(config)
    assert result.status == "completed" and result.step == 2
    assert result.last_loss is not None and math.isfinite(result.last_loss)
    assert (result.run_dir / "final" / "adapter_model.safetensors").is_file()
    saved = load_config(result.run_dir / "config.toml")
    preset = load_preset(name)
    for section, values in preset.config.items():
        if isinstance(values, dict):
            for key, value in values.items():
                assert getattr(getattr(saved, section), key) == value, f"{name}: {section}.{key}"


def test_the_8bit_tier_trains_with_bitsandbytes_state(tmp_path, tensors, tiny_dit):
    from acestep.training.session import TrainingSession

    config = apply_overrides(apply_named_preset(TrainingConfig(), "vram_12gb"), [
        f"data.tensors_dir={tensors}", f"model.checkpoint={tiny_dit}", f"run.output_dir={tmp_path}",
        "run.accelerator=cpu", "adapter.rank=64"])
    session = TrainingSession.start(config)
    try:
        assert type(session.optimizer.optimizer).__name__ == "AdamW8bit"
        loss, _ = session.batch_loss(next(iter(session.epoch_batches(0, 0))), session.step_generator(0, 0))
        session.fabric.backward(loss)
        session.optimizer.step()
        states = [s["state1"] for s in session.optimizer.optimizer.state.values()]
        assert torch.uint8 in {s.dtype for s in states}  # 8-bit state for tensors of 4096+ values
    finally:
        session.close()


# --- choosing a preset by GPU memory -----------------------------------------------------------------


@pytest.mark.parametrize(("gib", "expected"), [
    (48, "vram_24gb_plus"), (24, "vram_24gb_plus"), (23.6, "vram_24gb_plus"), (23.99, "vram_24gb_plus"),
    (16, "vram_16gb"), (15.6, "vram_16gb"), (20, "vram_16gb"),
    (12, "vram_12gb"), (11, "vram_12gb"), (10, "vram_12gb"), (9.77, "vram_12gb"),
    (8.0, "vram_8gb"), (7.6, "vram_8gb"), (6, "vram_8gb"), (4, "vram_8gb"),
])
def test_recommend_preset_by_total_memory(gib, expected):
    assert recommend_preset(int(gib * GIB)) == expected


def test_no_gpu_gets_the_quick_test_and_small_cards_a_warning():
    assert recommend_preset(None) == "quick_test"
    assert "no CUDA GPU" in recommendation_message(None)
    assert "warning" in recommendation_message(6 * GIB) and "6.0 GiB" in recommendation_message(6 * GIB)
    assert "warning" not in recommendation_message(int(7.6 * GIB))
    assert recommendation_message(int(23.6 * GIB)).startswith("vram_24gb_plus")


# --- user presets ---------------------------------------------------------------------------------


def test_user_preset_from_a_partial_dict_is_saved_listed_loaded_and_applied(user_folder):
    path = save_user_preset("my-fast", {"optimizer": {"lr": 3e-4}, "data": {"batch_size": 2}}, "faster lr",
                            min_vram_gib=12, notes={"optimizer.lr": "tried and liked"})
    assert path == user_folder / "my-fast.json" and user_presets_dir() == user_folder
    stored = json.loads(path.read_text())
    assert stored == {"name": "my-fast", "description": "faster lr", "min_vram_gib": 12,
                      "notes": {"optimizer.lr": "tried and liked"},
                      "config": {"optimizer": {"lr": 3e-4}, "data": {"batch_size": 2}, "version": 1}}
    assert [p.name for p in list_presets()][-1] == "my-fast" and not load_preset("my-fast").builtin
    base = apply_overrides(TrainingConfig(), ["data.tensors_dir=/t", "optimizer.name=adafactor"])
    applied = apply_named_preset(base, "my-fast")
    assert applied.optimizer.lr == 3e-4 and applied.data.batch_size == 2
    assert applied.optimizer.name == "adafactor"  # a partial config leaves the rest alone


def test_user_preset_from_a_whole_config_leaves_out_where_the_data_and_model_are(user_folder):
    config = apply_overrides(TrainingConfig(), ["data.tensors_dir=/data/t", "model.checkpoint=/m/x", "run.name=r1",
                                                "run.output_dir=/runs", "adapter.rank=8", "data.max_seconds=none"])
    save_user_preset("whole", config, "everything")
    stored = json.loads((user_folder / "whole.json").read_text())["config"]
    assert "tensors_dir" not in stored["data"] and "checkpoint" not in stored["model"]
    assert "name" not in stored["run"] and "output_dir" not in stored["run"]
    other = apply_overrides(TrainingConfig(), ["data.tensors_dir=/elsewhere", "adapter.rank=99"])
    applied = apply_named_preset(other, "whole")
    assert applied.adapter.rank == 8 and applied.data.max_seconds is None
    assert applied.data.tensors_dir == "/elsewhere"
    expected = config_to_dict(config)
    expected["data"]["tensors_dir"] = "/elsewhere"
    expected["model"]["checkpoint"], expected["run"]["name"] = "acestep-v15-turbo", ""
    expected["run"]["output_dir"] = "runs"
    assert config_to_dict(applied) == expected


def test_user_presets_refuse_builtin_names_bad_names_overwrites_and_bad_settings(user_folder):
    with pytest.raises(ConfigError, match="built-in preset"):
        save_user_preset("vram_8gb", {"optimizer": {"lr": 1e-3}}, "mine")
    for bad in ("", "../escape", "a/b", "with space", ".hidden"):
        with pytest.raises(ConfigError, match="preset name"):
            save_user_preset(bad, {}, "x")
    save_user_preset("mine", {"optimizer": {"lr": 1e-3}}, "first")
    with pytest.raises(ConfigError, match="exists already"):
        save_user_preset("mine", {"optimizer": {"lr": 2e-3}}, "second")
    save_user_preset("mine", {"optimizer": {"lr": 2e-3}}, "second", overwrite=True)
    assert load_preset("mine").config["optimizer"]["lr"] == 2e-3
    with pytest.raises(ConfigError, match="optimizer.lr"):
        save_user_preset("broken", {"optimizer": {"lr": -1}}, "x")
    with pytest.raises(ConfigError, match="unknown field run.epoch"):
        save_user_preset("typo", {"run": {"epoch": 3}}, "x")
    assert not (user_folder / "broken.json").exists() and not (user_folder / "typo.json").exists()


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"name": "bad", "description": "d"}', "missing config"),
    ('{"name": "bad", "description": "d", "config": {}, "extra": 1}', "unknown key"),
    ('{"name": "other", "description": "d", "config": {}}', "must be the file name"),
    ('{"name": "bad", "description": "d", "config": {"optimizer": {"name": "sgd"}}}', "optimizer.name"),
    ('{"name": "bad", "description": "d", "config": {"run": {"epochs": 10, "best_after_epochs": 20}}}',
     "best_after_epochs"),
    ('{"name": "bad", "description": "d", "min_vram_gib": "8", "config": {}}', "min_vram_gib"),
    ('{"name": "bad", "description": "d", "notes": {"optimizer.lr": "x"}, "config": {}}', "notes on field"),
])
def test_a_malformed_user_preset_is_a_config_error_naming_the_file(user_folder, content, message):
    user_folder.mkdir()
    path = user_folder / "bad.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as caught:
        load_preset("bad")
    assert str(path) in str(caught.value)
    with pytest.raises(ConfigError, match=message):
        list_presets()
    errors = []
    assert [p.name for p in list_presets(errors)] == list(BUILTIN_ORDER)
    assert len(errors) == 1 and str(path) in errors[0]


def test_a_user_file_cannot_shadow_a_builtin_and_unknown_names_list_the_known(user_folder):
    user_folder.mkdir()
    (user_folder / "vram_8gb.json").write_text(json.dumps({"name": "vram_8gb", "description": "d", "config": {}}))
    with pytest.raises(ConfigError, match="cannot take the built-in name"):
        list_presets()
    assert load_preset("vram_8gb").builtin  # the built-in file wins by name
    (user_folder / "vram_8gb.json").unlink()
    with pytest.raises(ConfigError, match="unknown preset 'nope'.*vram_24gb_plus.*quick_test"):
        load_preset("nope")
