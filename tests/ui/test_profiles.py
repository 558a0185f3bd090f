"""Profiles: the dataset settings and the training config in one TOML file, a run's config.toml
loaded as one, and the messages for broken files."""

from pathlib import Path

import pytest

from acestep.errors import ConfigError
from acestep.training.config import TrainingConfig, apply_overrides, save_config
from acestep.ui.context import AppContext, PathRefused, Workspace
from acestep.ui.profiles import list_profiles, load_form_profile, load_profile, save_form_profile, save_profile
from acestep.ui.train_form import config_from_values, values_from_config

DATASET = {"dataset_path": "datasets/band.json", "trigger_tag": "mystyle", "tag_position": "append",
           "genre_ratio": 0.3}


def a_config(*overrides: str) -> TrainingConfig:
    return apply_overrides(TrainingConfig(), ["data.tensors_dir=tensors/band", "adapter.rank=16", "adapter.alpha=32",
                                              "optimizer.name=prodigy", "optimizer.lr=1.0", "data.max_seconds=none",
                                              "objective.min_snr_gamma=5", "run.devices=\"1\"", *overrides])


@pytest.fixture
def ctx(tmp_path) -> AppContext:
    return AppContext.create(Workspace(tmp_path / "ws", tmp_path / "checkpoints"))


def test_a_profile_round_trips_the_config_and_the_dataset_settings(tmp_path):
    config = a_config()
    path = save_profile(tmp_path / "band.toml", config, DATASET)
    text = path.read_text()
    assert "[dataset]" in text and 'trigger_tag = "mystyle"' in text and "[training.adapter]" in text
    assert 'max_seconds = "none"' in text  # unset where the default is set: written as "none"
    assert "timestep_mu" not in text  # unset like its default: left out
    loaded, settings = load_profile(path)
    assert loaded == config and loaded.data.max_seconds is None and loaded.run.devices == "1"
    assert settings == DATASET


def test_missing_dataset_settings_get_their_defaults_and_an_incomplete_config_is_fine(tmp_path):
    path = tmp_path / "partial.toml"
    path.write_text('profile_version = 1\n[dataset]\ntrigger_tag = "x"\n[training.adapter]\nrank = 8\n')
    config, settings = load_profile(path)
    assert config.adapter.rank == 8 and config.data.tensors_dir == "" and config.optimizer.lr == 1e-4
    assert settings == {"dataset_path": "", "trigger_tag": "x", "tag_position": "prepend", "genre_ratio": 0.0}


def test_a_runs_config_toml_loads_as_a_profile_without_dataset_settings(tmp_path):
    config = a_config("run.name=night", f"run.output_dir={tmp_path / 'runs'}")
    path = save_config(config, tmp_path / "runs" / "night" / "config.toml")
    assert load_profile(path) == (config, {})


def test_malformed_toml_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("profile_version = 1\n[training\nrank = 4\n")
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML: .*line 2"):
        load_profile(path)
    with pytest.raises(ConfigError, match=r"nowhere\.toml: profile does not exist"):
        load_profile(tmp_path / "nowhere.toml")


def test_bad_values_name_the_file_and_the_field(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("profile_version = 1\n[training.optimizer]\nlr = -1\n")
    with pytest.raises(ConfigError, match=r"bad\.toml \[training\]: optimizer\.lr must be more than 0, found -1"):
        load_profile(path)
    path.write_text('[dataset]\ntag_position = "middle"\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: dataset\.tag_position must be one of prepend, append, replace"):
        load_profile(path)
    path.write_text('[dataset]\ntrigger = "x"\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: unknown dataset setting\(s\) trigger"):
        load_profile(path)
    path.write_text('profile_version = 1\nextra = 2\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: unknown key\(s\) extra"):
        load_profile(path)
    with pytest.raises(ConfigError, match="genre_ratio must be a number from 0 to 1, found 2"):
        save_profile(tmp_path / "x.toml", a_config(), {**DATASET, "genre_ratio": 2})
    assert not (tmp_path / "x.toml").exists()


def test_the_dropdown_lists_profiles_then_run_configs(ctx):
    save_profile(ctx.workspace.profiles / "b.toml", a_config(), DATASET)
    save_profile(ctx.workspace.profiles / "a.toml", a_config(), DATASET)
    run_config = save_config(a_config("run.name=r1"), ctx.workspace.runs / "r1" / "config.toml")
    (ctx.workspace.runs / ".configs").mkdir()
    save_config(a_config(), ctx.workspace.runs / ".configs" / "config.toml")  # not a run
    assert list_profiles(ctx.workspace.profiles, ctx.workspace.runs) == [
        ("a", str(ctx.workspace.profiles / "a.toml")), ("b", str(ctx.workspace.profiles / "b.toml")),
        ("run: r1", str(run_config))]


def test_the_tab_saves_and_loads_the_form_and_refuses_bad_names_and_outside_paths(ctx, tmp_path):
    config = a_config()
    values = values_from_config(config)
    dataset_values = list(DATASET.values())
    path = save_form_profile(ctx, "my band", values, dataset_values)
    assert path == ctx.workspace.profiles / "my band.toml"
    loaded_values, loaded_dataset = load_form_profile(ctx, "profiles/my band.toml")
    assert config_from_values(loaded_values, complete=False) == config and loaded_dataset == dataset_values
    run_config = save_config(a_config("run.name=r1"), ctx.workspace.runs / "r1" / "config.toml")
    assert load_form_profile(ctx, str(run_config))[1] is None  # a run's config leaves the dataset inputs alone
    with pytest.raises(ConfigError, match="profile name '../evil'"):
        save_form_profile(ctx, "../evil", values, dataset_values)
    with pytest.raises(PathRefused, match="outside the folders this app may use"):
        save_form_profile(ctx, "x", values, ["/etc/passwd", "", "prepend", 0.0])
    outside = save_profile(tmp_path / "outside.toml", config, DATASET)
    with pytest.raises(PathRefused, match="outside the folders this app may use"):
        load_form_profile(ctx, str(outside))
    assert sorted(Path(p).name for _, p in list_profiles(ctx.workspace.profiles, ctx.workspace.runs)) == [
        "config.toml", "my band.toml"]
