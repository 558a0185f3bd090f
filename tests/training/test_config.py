"""Tests for acestep.training.config: the typed training config, its files, overrides, presets,
validation messages and migrations."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acestep.errors import ConfigError
from acestep.training import config as cfg
from acestep.training.config import (
    CONFIG_VERSION, MIGRATIONS, AdapterConfig, DataConfig, ModelConfig, ObjectiveConfig, OptimizerConfig,
    RunConfig, TrainingConfig, apply_overrides, apply_preset, config_from_dict, config_to_dict, describe_fields,
    diff_from_defaults, load_config, parse_devices, resolve_paths, save_config, validate,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_lora.toml"
SECTIONS = ("model", "data", "adapter", "objective", "optimizer", "run")


def minimal(**sections) -> dict:
    """The smallest valid config dict (a tensors folder), with `sections` merged in."""
    data = {"data": {"tensors_dir": "tensors"}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


def problems_of(call) -> tuple[str, list[tuple[str, str]]]:
    with pytest.raises(ConfigError) as caught:
        call()
    return str(caught.value), getattr(caught.value, "problems", [])


# --- the tree --------------------------------------------------------------------------------------


def test_defaults_are_the_documented_ones():
    assert config_to_dict(TrainingConfig()) == {
        "version": 1,
        "model": {"checkpoint": "acestep-v15-turbo", "checkpoints_dir": None, "dtype": "auto",
                  "quantization": "none"},
        "data": {"tensors_dir": "", "batch_size": 1, "max_seconds": 60.0, "repeats": 1, "group_by_length": True,
                 "validation_split": 0.0, "validation_seed": 1234, "num_workers": 0},
        "adapter": {"type": "lora", "rank": 64, "alpha": 128.0, "dropout": 0.1, "targets": "attention",
                    "mlp": False, "modules": [], "lokr_factor": -1},
        "objective": {"timestep_sampling": "logit_normal", "timestep_mu": None, "timestep_sigma": None,
                      "cfg_dropout": 0.15, "min_snr_gamma": None},
        "optimizer": {"name": "adamw", "lr": 1e-4, "weight_decay": 0.01, "betas": [0.9, 0.999], "eps": 1e-8,
                      "grad_clip": 1.0, "scheduler": "cosine", "warmup_steps": 100, "restarts": 1,
                      "gradient_accumulation": 1, "ema_decay": None},
        "run": {"output_dir": "runs", "name": "", "epochs": 10, "max_steps": None, "seed": 42,
                "precision": "auto", "accelerator": "auto", "devices": 1, "num_nodes": 1, "strategy": "auto",
                "gradient_checkpointing": False, "gradient_checkpointing_ratio": 1.0, "compile": False,
                "cuda_graphs": False, "skip_vram_check": False, "log_every_steps": 10,
                "save_every_epochs": 1, "save_every_steps": 0, "save_every_minutes": 30.0, "keep_checkpoints": 3,
                "early_stopping_patience": 0, "early_stopping_min_delta": 0.0, "best_after_epochs": 1,
                "nan_patience": 5, "preview_every_epochs": 0, "preview_every_steps": 0, "preview_caption": "",
                "preview_lyrics": "", "preview_language": "en", "preview_bpm": None, "preview_key": "",
                "preview_time_signature": "", "preview_seconds": 10.0, "preview_seed": 0, "preview_steps": None,
                "preview_shift": None, "preview_guidance_scale": None, "preview_guidance": "apg",
                "preview_strengths": [0.0, 1.0]},
    }
    assert CONFIG_VERSION == 1


def test_list_defaults_are_not_shared():
    first, second = OptimizerConfig(), OptimizerConfig()
    first.betas.append(0.5)
    assert second.betas == [0.9, 0.999]
    assert AdapterConfig().modules == []


def test_describe_fields_covers_every_field_with_help():
    docs = describe_fields()
    classes = (ModelConfig, DataConfig, AdapterConfig, ObjectiveConfig, OptimizerConfig, RunConfig)
    expected = [f"{section}.{f.name}" for section, cls in zip(SECTIONS, classes, strict=True)
                for f in dataclasses.fields(cls)]
    assert [doc.path for doc in docs] == expected
    assert all(len(doc.help) > 20 for doc in docs), [doc.path for doc in docs if len(doc.help) <= 20]
    by_path = {doc.path: doc for doc in docs}
    assert by_path["optimizer.lr"].default == 1e-4
    assert by_path["optimizer.lr"].type == "float"
    assert by_path["data.max_seconds"].type == "float | None"
    assert by_path["data.validation_split"].allowed == "from 0 to 0.5"
    assert by_path["adapter.dropout"].allowed == "at least 0 and less than 1"
    assert by_path["optimizer.name"].allowed == "one of: adamw, adamw8bit, adafactor, prodigy"
    assert by_path["data.tensors_dir"].allowed == "required"
    assert by_path["run.preview_bpm"].allowed == "more than 0 and less than 400"  # the dataset's tempo range
    assert by_path["run.preview_guidance"].allowed == "one of: apg, cfg"


# --- files -----------------------------------------------------------------------------------------


def full_config() -> TrainingConfig:
    """A config that sets every kind of value: None where the default is a value and the other way
    round, lists, text devices, non-default floats."""
    return config_from_dict({
        "model": {"checkpoint": "acestep-v15-base", "checkpoints_dir": "/models", "dtype": "bf16"},
        "data": {"tensors_dir": "/data/tensors", "batch_size": 3, "max_seconds": None, "validation_split": 0.2},
        "adapter": {"type": "lokr", "modules": ["q_proj", "v_proj"], "lokr_factor": 8, "alpha": 3},
        "objective": {"timestep_mu": -0.25, "timestep_sigma": 0.8, "min_snr_gamma": 5.0},
        "optimizer": {"lr": 3.5e-5, "betas": [0.8, 0.95], "grad_clip": None, "eps": 1e-10},
        "run": {"name": "my-run", "max_steps": 1234, "devices": "0,1", "strategy": "ddp", "epochs": 7,
                "best_after_epochs": 7, "early_stopping_min_delta": 1e-3},
    })


def test_save_and_load_give_back_an_equal_config(tmp_path):
    config = full_config()
    path = save_config(config, tmp_path / "run" / "config.toml")
    assert path == tmp_path / "run" / "config.toml"
    loaded = load_config(path)
    assert loaded == config
    assert loaded.data.max_seconds is None and loaded.optimizer.grad_clip is None
    assert loaded.adapter.alpha == 3.0 and isinstance(loaded.adapter.alpha, float)
    text = path.read_text(encoding="utf-8")
    assert "version = 1\n" in text
    assert 'max_seconds = "none"' in text  # unset, but its default is a value: written as "none"
    assert 'grad_clip = "none"' in text
    assert "timestep_mu = -0.25" in text and 'checkpoints_dir = "/models"' in text


def test_unset_fields_whose_default_is_unset_are_left_out(tmp_path):
    config = config_from_dict(minimal())
    path = save_config(config, tmp_path / "config.toml")
    text = path.read_text(encoding="utf-8")
    for name in ("checkpoints_dir", "timestep_mu", "timestep_sigma", "min_snr_gamma", "max_steps"):
        assert f"{name} =" not in text
    assert load_config(path) == config
    assert sorted(os.listdir(tmp_path)) == ["config.toml"]  # no temp file left behind


def test_save_refuses_an_invalid_config_and_keeps_the_old_file(tmp_path):
    path = save_config(config_from_dict(minimal()), tmp_path / "config.toml")
    before = path.read_bytes()
    broken = config_from_dict(minimal())
    broken.optimizer.lr = -1.0
    message, _ = problems_of(lambda: save_config(broken, path))
    assert "optimizer.lr must be more than 0, found -1.0" in message
    assert path.read_bytes() == before


def test_save_to_an_unwritable_place_is_a_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    message, _ = problems_of(lambda: save_config(config_from_dict(minimal()), blocker / "config.toml"))
    assert "cannot write the config file" in message


def test_the_example_config_loads_validates_and_documents_every_field():
    config = load_config(EXAMPLE)
    validate(config)
    assert config.data.batch_size * config.optimizer.gradient_accumulation == 4
    assert config.run.best_after_epochs <= config.run.epochs
    text = EXAMPLE.read_text(encoding="utf-8")
    for section in SECTIONS:
        assert f"\n[{section}]\n" in text
    for doc in describe_fields():
        name = doc.path.split(".")[1]
        assert f"\n{name} = " in text or f"\n# {name} = " in text, f"{doc.path} is not in the example"
    # The commented-out lines are valid settings too.
    uncommented = re.sub(r"^# (\w+ = )", r"\1", text, flags=re.MULTILINE)
    every = config_from_dict(cfg.tomllib.loads(uncommented))
    assert every.objective.min_snr_gamma == 5.0 and every.run.max_steps == 2000


def test_toml_syntax_error_names_the_file_and_line(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[optimizer]\nlr = 1e-4\nname = adamw\n', encoding="utf-8")
    message, _ = problems_of(lambda: load_config(path))
    assert str(path) in message and "not valid TOML" in message and "line 3" in message


@pytest.mark.parametrize("content, fragment", [
    (None, "config file does not exist"),
    (b"[data]\ntensors_dir = \"caf\xe9\"\n", "not UTF-8 text"),
    ("folder", "is a folder"),
])
def test_unreadable_files_are_config_errors_naming_the_file(tmp_path, content, fragment):
    path = tmp_path / "run.toml"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    message, _ = problems_of(lambda: load_config(path))
    assert str(path) in message and fragment in message


def test_a_file_with_a_bom_and_relative_path_loads(tmp_path, monkeypatch):
    (tmp_path / "run.toml").write_bytes("\ufeff[data]\ntensors_dir = \"t\"\n".encode("utf-8"))
    monkeypatch.chdir(tmp_path)
    assert load_config("run.toml").data.tensors_dir == "t"


def test_problems_in_a_file_name_the_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[data]\ntensors_dir = "t"\n[optimizer]\nlr = "1e-4"\nwhen = 2024-01-01\n', encoding="utf-8")
    message, problems = problems_of(lambda: load_config(path))
    assert message.startswith(f"{path}: 2 problems")
    assert "optimizer.lr must be a number, found '1e-4' (text): write it without quotes" in message
    assert "unknown field optimizer.when" in message
    assert [p for p, _ in problems] == ["optimizer.lr", "optimizer.when"]


# --- validation ------------------------------------------------------------------------------------

RULES = [
    ("model.checkpoint", "", "model.checkpoint is required"),
    ("model.dtype", "bf32", "model.dtype must be one of auto, bf16, fp16, fp32, found 'bf32'"),
    ("data.tensors_dir", "  ", "data.tensors_dir is required: the folder written by `acestep-trainer preprocess`"),
    ("data.batch_size", 0, "data.batch_size must be at least 1, found 0"),
    ("data.max_seconds", 0, "data.max_seconds must be more than 0, found 0.0"),
    ("data.validation_split", 0.6, "data.validation_split must be from 0 to 0.5, found 0.6"),
    ("data.validation_split", -0.1, "data.validation_split must be from 0 to 0.5, found -0.1"),
    ("data.validation_seed", -1, "data.validation_seed must be from 0 to 4294967295, found -1"),
    ("data.num_workers", -1, "data.num_workers must be at least 0, found -1"),
    ("adapter.type", "loha", "adapter.type must be one of lora, dora, lokr, found 'loha'"),
    ("adapter.rank", 0, "adapter.rank must be at least 1, found 0"),
    ("adapter.alpha", 0, "adapter.alpha must be more than 0, found 0.0"),
    ("adapter.dropout", 1, "adapter.dropout must be at least 0 and less than 1, found 1.0"),
    ("adapter.targets", "mlp", "adapter.targets must be one of self_attention, cross_attention, attention"),
    ("adapter.modules", ["q_proj", " "], "adapter.modules must be distinct, non-empty module names"),
    ("adapter.modules", ["q_proj", "q_proj"], "adapter.modules must be distinct, non-empty module names"),
    ("adapter.lokr_factor", 0, "adapter.lokr_factor must be -1 (automatic) or at least 1, found 0"),
    ("objective.timestep_sampling", "uniform",
     "objective.timestep_sampling must be one of logit_normal, turbo_discrete"),
    ("objective.timestep_sigma", 0, "objective.timestep_sigma must be more than 0, found 0.0"),
    ("objective.cfg_dropout", 1.5, "objective.cfg_dropout must be from 0 to 1, found 1.5"),
    ("objective.min_snr_gamma", -5, "objective.min_snr_gamma must be more than 0, found -5.0"),
    ("optimizer.name", "adamw8", "optimizer.name must be one of adamw, adamw8bit, adafactor, prodigy, found "
                                 "'adamw8'; did you mean adamw8bit?"),
    ("optimizer.lr", 0, "optimizer.lr must be more than 0, found 0.0"),
    ("optimizer.weight_decay", -0.01, "optimizer.weight_decay must be at least 0, found -0.01"),
    ("optimizer.betas", [0.9], "optimizer.betas must be two numbers, each at least 0 and less than 1, found [0.9]"),
    ("optimizer.betas", [0.9, 1], "optimizer.betas must be two numbers, each at least 0 and less than 1"),
    ("optimizer.betas", [-0.1, 0.9], "optimizer.betas must be two numbers, each at least 0 and less than 1"),
    ("optimizer.eps", 0, "optimizer.eps must be more than 0, found 0.0"),
    ("optimizer.grad_clip", 0, "optimizer.grad_clip must be more than 0, found 0.0"),
    ("optimizer.scheduler", "step", "optimizer.scheduler must be one of cosine, cosine_with_restarts, linear"),
    ("optimizer.warmup_steps", -1, "optimizer.warmup_steps must be at least 0, found -1"),
    ("optimizer.restarts", 0, "optimizer.restarts must be at least 1, found 0"),
    ("optimizer.gradient_accumulation", 0, "optimizer.gradient_accumulation must be at least 1, found 0"),
    ("run.output_dir", "", "run.output_dir is required"),
    ("run.name", "a/b", "run.name must be a folder name"),
    ("run.name", "..", "run.name must be a folder name"),
    ("run.name", "run.", "run.name must be a folder name"),
    ("run.name", " run", "run.name must be a folder name"),
    ("run.name", "x" * 300, "run.name is too long for a folder name: 300 characters; keep it to 100 "),
    ("run.name", "🎸" * 26, "run.name is too long for a folder name: 26 characters; keep it to 100 (accented letters "
                           "count 2, emoji 4)"),
    ("run.epochs", 0, "run.epochs must be at least 1, found 0"),
    ("run.max_steps", 0, "run.max_steps must be at least 1, found 0"),
    ("run.seed", -1, "run.seed must be from 0 to 4294967295, found -1"),
    ("run.seed", 2**32, "run.seed must be from 0 to 4294967295, found 4294967296"),
    ("run.precision", "bf16", "run.precision must be one of auto, bf16-mixed, 16-mixed, 32-true, found 'bf16'; "
                              "did you mean bf16-mixed?"),
    ("run.accelerator", "gpu", "run.accelerator must be one of auto, cuda, cpu, mps, found 'gpu'"),
    ("run.devices", 0, 'run.devices must be a number of devices (at least 1), "auto", or the GPU indices'),
    ("run.devices", -1, "run.devices must be a number of devices"),
    ("run.devices", "0,0", "(each once), found '0,0'"),
    ("run.devices", "gpu", "found 'gpu'"),
    ("run.devices", "", "run.devices must be a number of devices"),
    ("run.num_nodes", 0, "run.num_nodes must be at least 1, found 0"),
    ("run.strategy", "fsdp", "run.strategy must be one of auto, ddp, found 'fsdp'"),
    ("run.log_every_steps", 0, "run.log_every_steps must be at least 1, found 0"),
    ("run.save_every_epochs", -1, "run.save_every_epochs must be at least 0, found -1"),
    ("run.save_every_steps", -1, "run.save_every_steps must be at least 0, found -1"),
    ("run.keep_checkpoints", 0, "run.keep_checkpoints must be at least 1, found 0"),
    ("run.early_stopping_patience", -1, "run.early_stopping_patience must be at least 0, found -1"),
    ("run.early_stopping_min_delta", -0.5, "run.early_stopping_min_delta must be at least 0, found -0.5"),
    ("run.best_after_epochs", 0, "run.best_after_epochs must be at least 1, found 0"),
    ("run.best_after_epochs", 11, "run.best_after_epochs (11) must be at most run.epochs (10): best/ would never"),
    ("run.nan_patience", 0, "run.nan_patience must be at least 1, found 0"),
    # the previews' prompt and sampler: the dataset's tempo range and what the `preview` command takes
    ("run.preview_bpm", 0, "run.preview_bpm must be more than 0 and less than 400, found 0"),
    ("run.preview_bpm", 400, "run.preview_bpm must be more than 0 and less than 400, found 400"),
    ("run.preview_bpm", "90", "run.preview_bpm must be a number, or \"none\" to unset it, found '90' (text)"),
    ("run.preview_key", 5, "run.preview_key must be text, found 5"),
    ("run.preview_steps", 0, "run.preview_steps must be at least 1, found 0"),
    ("run.preview_steps", 2.5, "run.preview_steps must be a whole number, or \"none\" to unset it, found 2.5"),
    ("run.preview_shift", 0, "run.preview_shift must be more than 0, found 0"),
    ("run.preview_guidance_scale", -1, "run.preview_guidance_scale must be at least 0, found -1"),
    ("run.preview_guidance", "pag", "run.preview_guidance must be one of apg, cfg, found 'pag'"),
    # Types: TOML has real types, so numbers in quotes are refused (with the fix).
    ("optimizer.lr", "1e-4", "optimizer.lr must be a number, found '1e-4' (text): write it without quotes"),
    ("run.epochs", "10", "run.epochs must be a whole number, found '10' (text): write it without quotes"),
    ("run.epochs", 2.5, "run.epochs must be a whole number, found 2.5"),
    ("run.epochs", 10.0, "run.epochs must be a whole number, found 10.0"),
    ("run.epochs", True, "run.epochs must be a whole number, found true"),
    ("run.epochs", 2**70, "run.epochs must be a whole number that fits in 64 bits"),
    ("data.group_by_length", "yes", "data.group_by_length must be true or false, found 'yes'"),
    ("data.group_by_length", 1, "data.group_by_length must be true or false, found 1"),
    ("adapter.modules", "q_proj", "adapter.modules must be a list of text, found 'q_proj'"),
    ("optimizer.betas", [0.9, "0.99"], "optimizer.betas must be a list of numbers, found [0.9, '0.99']"),
    ("optimizer.lr", math.nan, "optimizer.lr must be a finite number, found nan"),
    ("optimizer.lr", math.inf, "optimizer.lr must be a finite number, found inf"),
    ("optimizer.lr", 10**400, "optimizer.lr must be a finite number"),
    ("optimizer.lr", None, "optimizer.lr must be a number, found none"),
    ("data.max_seconds", "60", 'data.max_seconds must be a number, or "none" to unset it, found \'60\' (text)'),
    ("model.checkpoints_dir", 5, 'model.checkpoints_dir must be text, or "none" to unset it, found 5'),
    ("run.name", 3, "run.name must be text, found 3"),
    ("run.devices", True, 'run.devices must be a whole number or text ("auto", "0,1"), found true'),
    ("run.devices", [0, 1], 'run.devices must be a whole number or text ("auto", "0,1"), found [0, 1]'),
]


@pytest.mark.parametrize("path, value, fragment", RULES, ids=[f"{r[0]}={r[1]!r:.20}" for r in RULES])
def test_each_rule_names_the_field_the_value_and_what_is_allowed(path, value, fragment):
    section, name = path.split(".")
    message, problems = problems_of(lambda: config_from_dict(minimal(**{section: {name: value}}), "run.toml"))
    assert message.startswith("run.toml: ")
    assert fragment in message
    assert [p for p, _ in problems] == [path]  # one problem, attributed to the field


VALID = [
    ("data.validation_split", 0.5), ("data.validation_split", 0), ("adapter.dropout", 0.0),
    ("objective.cfg_dropout", 0), ("objective.cfg_dropout", 1), ("run.seed", 0), ("run.seed", 2**32 - 1),
    ("run.devices", "auto"), ("run.devices", "0,1"), ("run.devices", "1"), ("run.devices", 4),
    ("adapter.lokr_factor", -1), ("adapter.lokr_factor", 4), ("run.best_after_epochs", 10),
    ("data.max_seconds", None), ("data.max_seconds", "none"), ("optimizer.grad_clip", "NULL"),
    ("objective.timestep_mu", -3), ("run.save_every_epochs", 0), ("run.name", "lora v2_final"),
    ("adapter.modules", ["layers.0.self_attn.q_proj"]), ("optimizer.betas", [0, 0.5]),
    ("run.preview_bpm", 0.5), ("run.preview_bpm", 399.5), ("run.preview_bpm", "none"), ("run.preview_key", "Am"),
    ("run.preview_time_signature", "6/8"), ("run.preview_steps", 1), ("run.preview_shift", 0.01),
    ("run.preview_guidance_scale", 0), ("run.preview_guidance_scale", 15), ("run.preview_guidance", "cfg"),
]


@pytest.mark.parametrize("path, value", VALID)
def test_values_at_the_edges_of_the_rules_are_accepted(path, value):
    section, name = path.split(".")
    config = config_from_dict(minimal(**{section: {name: value}}))
    stored = getattr(getattr(config, section), name)
    if isinstance(value, str) and value.casefold() in ("none", "null"):
        assert stored is None
    else:
        assert stored == value and type(stored) is (float if path in FLOAT_FIELDS and value is not None
                                                     else type(value))


FLOAT_FIELDS = {doc.path for doc in describe_fields() if doc.type.startswith("float")}


def test_ints_are_accepted_for_floats_and_stored_as_floats():
    config = config_from_dict(minimal(optimizer={"lr": 1, "betas": [0, 1 - 1e-3]}, adapter={"alpha": 16}))
    assert config.optimizer.lr == 1.0 and type(config.optimizer.lr) is float
    assert all(type(beta) is float for beta in config.optimizer.betas)
    assert type(config.adapter.alpha) is float


@pytest.mark.parametrize(("sections", "fragment"), [
    ({"adapter": {"type": "lokr"}}, "model.quantization=nf4 works with adapter.type lora or dora, not lokr"),
    ({"run": {"compile": True}}, "model.quantization=nf4 and run.compile do not go together"),
])
def test_an_nf4_base_refuses_lokr_and_compile(sections, fragment):
    message, problems = problems_of(lambda: config_from_dict(minimal(model={"quantization": "nf4"}, **sections)))
    assert fragment in message and problems[0][0] == "model.quantization"
    dora = config_from_dict(minimal(model={"quantization": "nf4"}, adapter={"type": "dora"}))
    assert dora.model.quantization == "nf4"
    assert config_from_dict(minimal(**sections)).model.quantization == "none"  # each alone is fine


@pytest.mark.parametrize(("sections", "fragment"), [
    ({"run": {"cuda_graphs": True}}, "run.cuda_graphs replays the compiled blocks' kernels: it needs run.compile=true"),
    ({"run": {"cuda_graphs": True, "compile": True, "gradient_checkpointing": True}},
     "run.cuda_graphs and run.gradient_checkpointing do not go together yet (the pair has not run on a GPU): set "
     "one of them to false"),
    ({"run": {"cuda_graphs": True, "compile": True}, "optimizer": {"gradient_accumulation": 4}},
     "run.cuda_graphs and optimizer.gradient_accumulation=4 do not go together yet (the pair has not run on a GPU): "
     "set optimizer.gradient_accumulation=1"),
])
def test_cuda_graphs_need_compile_no_checkpointing_and_no_accumulation(sections, fragment):
    message, problems = problems_of(lambda: config_from_dict(minimal(**sections)))
    assert fragment in message and problems[0][0] == "run.cuda_graphs"
    assert config_from_dict(minimal(run={"cuda_graphs": True, "compile": True})).run.cuda_graphs


def test_prodigy_needs_an_lr_near_one():
    message, problems = problems_of(lambda: config_from_dict(minimal(optimizer={"name": "prodigy"})))
    assert "optimizer.lr must be from 0.1 to 10 with prodigy" in message and "found 0.0001" in message
    assert problems[0][0] == "optimizer.lr"
    assert config_from_dict(minimal(optimizer={"name": "prodigy", "lr": 1.0})).optimizer.lr == 1.0


def test_every_problem_is_reported_at_once():
    data = minimal(
        optimizer={"lr": -1, "lrr": 2, "betas": [0.9]},
        run={"epochs": 0, "best_after_epochs": "5", "devices": "x"},
        adapter={"type": "loha"},
        optimiser={},
    )
    data["data"]["tensors_dir"] = ""
    data["data"]["group_by_length"] = 0
    message, problems = problems_of(lambda: config_from_dict(data, "run.toml"))
    assert message.startswith("run.toml: 10 problems in the training config:\n  - ")
    assert sorted(path for path, _ in problems) == sorted([
        "optimizer.lr", "optimizer.lrr", "optimizer.betas", "run.epochs", "run.best_after_epochs",
        "run.devices", "adapter.type", "optimiser", "data.tensors_dir", "data.group_by_length"])
    assert message.count("\n  - ") == 10
    # A field of the wrong type is reported once: its rules (best_after <= epochs) are not run on it.
    assert "run.best_after_epochs (" not in message


def test_a_section_that_is_not_a_table():
    message, problems = problems_of(lambda: config_from_dict(minimal() | {"run": None, "optimizer": 5}))
    assert "optimizer must be a section (a [optimizer] table), found 5" in message
    assert "run must be a section" in message


def test_a_config_that_is_not_a_table():
    message, _ = problems_of(lambda: config_from_dict([1, 2], "x.json"))
    assert message.startswith("x.json: a training config must be a table of sections")


@pytest.mark.parametrize("data, fragment", [
    ({"optimizer": {"lrr": 1e-4}}, "unknown field optimizer.lrr; did you mean optimizer.lr?"),
    ({"optimizer": {"epochs": 3}}, "unknown field optimizer.epochs; did you mean run.epochs?"),
    ({"adapter": {"lora_rank": 3}}, "unknown field adapter.lora_rank; did you mean adapter.rank?"),
    ({"run": {"xyzzy": 3}}, "unknown field run.xyzzy; [run] has output_dir, name, epochs"),
    ({"optimiser": {"lr": 1}}, "unknown section [optimiser]; did you mean [optimizer]?"),
    ({"training": {"lr": 1}}, "unknown section [training]; the sections are model, data, adapter"),
    ({"lr": 1e-4}, "unknown setting 'lr' outside any section; did you mean optimizer.lr (under [optimizer])?"),
])
def test_unknown_names_get_a_suggestion(data, fragment):
    message, _ = problems_of(lambda: config_from_dict(minimal(**{k: v for k, v in data.items()
                                                                    if isinstance(v, dict)})
                                                      | {k: v for k, v in data.items() if not isinstance(v, dict)}))
    assert fragment in message


def test_validate_checks_configs_built_in_code():
    config = TrainingConfig(data=DataConfig(tensors_dir="t"))
    validate(config)
    config.optimizer.lr = "1e-4"
    config.optimizer.betas = (0.9, 0.99)
    config.run = None
    config.version = 2
    message, problems = problems_of(lambda: validate(config))
    assert [path for path, _ in problems] == ["version", "optimizer.lr", "optimizer.betas", "run"]
    assert "version must be 1, found 2" in message
    assert "run must be a RunConfig, found none" in message
    with pytest.raises(ConfigError, match="expected a TrainingConfig, found dict"):
        validate({})
    config = TrainingConfig(model=ModelConfig(checkpoints_dir="None"), data=DataConfig(tensors_dir="t"))
    with pytest.raises(ConfigError, match="model.checkpoints_dir is 'None', which a config file reads as unset"):
        validate(config)


def test_incomplete_configs_pass_only_when_asked():
    with pytest.raises(ConfigError, match="data.tensors_dir is required"):
        validate(TrainingConfig())
    validate(TrainingConfig(), complete=False)
    assert config_from_dict({}, complete=False) == TrainingConfig()
    with pytest.raises(ConfigError, match="adapter.rank must be at least 1"):
        config_from_dict({"adapter": {"rank": 0}}, complete=False)  # only the required check is skipped


# --- overrides -------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, path, expected", [
    ("run.compile=true", "run.compile", True),
    ("run.compile=Yes", "run.compile", True),
    ("data.group_by_length=0", "data.group_by_length", False),
    ("data.group_by_length=off", "data.group_by_length", False),
    ("run.epochs=25", "run.epochs", 25),
    ("run.epochs= 25 ", "run.epochs", 25),
    ("optimizer.lr=2e-4", "optimizer.lr", 2e-4),
    ("optimizer.lr=1", "optimizer.lr", 1.0),
    ("data.max_seconds=none", "data.max_seconds", None),
    ("optimizer.grad_clip=null", "optimizer.grad_clip", None),
    ("run.max_steps=500", "run.max_steps", 500),
    ("model.checkpoints_dir=None", "model.checkpoints_dir", None),
    ("optimizer.betas=0.9,0.95", "optimizer.betas", [0.9, 0.95]),
    ("optimizer.betas=[0.9, 0.95]", "optimizer.betas", [0.9, 0.95]),
    ("adapter.modules=q_proj, v_proj", "adapter.modules", ["q_proj", "v_proj"]),
    ('adapter.modules=["q_proj", "v_proj"]', "adapter.modules", ["q_proj", "v_proj"]),
    ("adapter.modules=[q_proj,v_proj]", "adapter.modules", ["q_proj", "v_proj"]),
    ("adapter.modules=", "adapter.modules", []),
    ("adapter.modules=[]", "adapter.modules", []),
    ("run.name=my run=2", "run.name", "my run=2"),
    ("model.checkpoint=/models/acestep-v15-base", "model.checkpoint", "/models/acestep-v15-base"),
    ("optimizer.name=prodigy", "optimizer.name", "prodigy"),  # with lr=1.0 below
    ("run.devices=2", "run.devices", 2),
    ("run.devices=0,1", "run.devices", "0,1"),
    ("run.devices=auto", "run.devices", "auto"),
    ('run.devices="1"', "run.devices", "1"),
])
def test_overrides_are_parsed_by_the_field_type(override, path, expected):
    base = config_from_dict(minimal(optimizer={"lr": 0.5}))
    changed = apply_overrides(base, [override, "optimizer.lr=1.0"] if "prodigy" in override else [override])
    section, name = path.split(".")
    value = getattr(getattr(changed, section), name)
    assert value == expected and type(value) is type(expected)
    assert base == config_from_dict(minimal(optimizer={"lr": 0.5}))  # the input is not changed


def test_overrides_apply_in_order_and_leave_the_rest():
    base = config_from_dict(minimal(run={"epochs": 50}))
    changed = apply_overrides(base, ["run.epochs=5", "run.epochs=6", "data.batch_size=2"])
    assert changed.run.epochs == 6 and changed.data.batch_size == 2
    assert diff_from_defaults(changed) == {"data": {"tensors_dir": "tensors", "batch_size": 2}, "run": {"epochs": 6}}


@pytest.mark.parametrize("override, fragment", [
    ("optimizer.lrr=1", "--set optimizer.lrr=1: unknown field optimizer.lrr; did you mean optimizer.lr?"),
    ("optimiser.lr=1", "--set optimiser.lr=1: unknown section [optimiser]; did you mean [optimizer]?"),
    ("lr=1", "--set lr=1: 'lr' is not a setting: expected section.field=value; did you mean optimizer.lr?"),
    ("optimizer.lr.x=1", "'optimizer.lr.x' is not a setting"),
    ("optimizer.lr", "--set optimizer.lr: expected section.field=value"),
    ("optimizer.lr=abc", "--set optimizer.lr=abc: optimizer.lr must be a number, found 'abc'"),
    ("run.epochs=2.0", "run.epochs must be a whole number, found '2.0'"),
    ("run.compile=maybe", "run.compile must be true or false, found 'maybe'"),
    ("run.epochs=none", "run.epochs must be a whole number, found 'none'"),
    ("optimizer.betas=0.9,x", "optimizer.betas must be a list of numbers, found '0.9,x'"),
    ("optimizer.lr=nan", "optimizer.lr must be a finite number, found nan"),
    ("run.epochs=0", "run.epochs must be at least 1, found 0"),
    ("run.devices=0,0", "run.devices must be a number of devices"),
])
def test_bad_overrides_are_config_errors(override, fragment):
    message, _ = problems_of(lambda: apply_overrides(config_from_dict(minimal()), [override]))
    assert fragment in message


def test_every_bad_override_is_reported_together():
    message, problems = problems_of(lambda: apply_overrides(
        config_from_dict(minimal()), ["optimizer.lrr=1", "run.epochs=x", "data.batch_size=0", "run.seed=3"]))
    assert message.startswith("--set overrides: 3 problems")
    assert [path for path, _ in problems] == ["optimizer.lrr", "run.epochs", "data.batch_size"]


# --- presets ---------------------------------------------------------------------------------------


def test_a_preset_is_merged_over_the_config():
    base = config_from_dict(minimal(optimizer={"lr": 3e-4}, run={"epochs": 300}))
    preset = {"optimizer": {"name": "adafactor", "scheduler": "constant_with_warmup"},
              "run": {"gradient_checkpointing": True, "best_after_epochs": 200},
              "adapter": {"rank": 16, "alpha": 32, "targets": "self_attention"}}
    merged = apply_preset(base, preset, "presets/8gb.json")
    assert merged.optimizer.name == "adafactor" and merged.optimizer.lr == 3e-4  # lr kept from the config
    assert merged.run.epochs == 300 and merged.run.gradient_checkpointing and merged.run.best_after_epochs == 200
    assert (merged.adapter.rank, merged.adapter.alpha, merged.adapter.targets) == (16, 32.0, "self_attention")
    assert merged.data.tensors_dir == "tensors"
    assert base.optimizer.name == "adamw"  # the input is not changed
    assert apply_preset(base, {}) == base


def test_a_preset_whose_best_after_falls_outside_the_run_is_refused():
    message, _ = problems_of(lambda: apply_preset(config_from_dict(minimal()), {"run": {"best_after_epochs": 200}},
                                                  "presets/quick_test.json"))
    assert message == ("presets/quick_test.json: run.best_after_epochs (200) must be at most run.epochs (10): "
                       "best/ would never be saved")


@pytest.mark.parametrize("preset, fragment", [
    ({"optimizer": {"learning_rate": 1e-4}},
     "presets/x.json: unknown field optimizer.learning_rate; did you mean optimizer.lr?"),
    ({"optimizer": {"name": "adamw_8bit"}}, "did you mean adamw8bit?"),
    ({"optimizer": 3}, "optimizer must be a section"),
    ({"version": 99}, "presets/x.json: written by a newer trainer"),
    ([1], "presets/x.json: a preset must be a table of sections"),
])
def test_bad_presets_are_config_errors_naming_the_preset(preset, fragment):
    message, _ = problems_of(lambda: apply_preset(config_from_dict(minimal()), preset, "presets/x.json"))
    assert fragment in message


def test_a_preset_can_be_applied_to_a_config_still_being_filled_in():
    merged = apply_preset(TrainingConfig(), {"data": {"batch_size": 2}}, complete=False)
    assert merged.data.batch_size == 2 and merged.data.tensors_dir == ""
    with pytest.raises(ConfigError, match="data.tensors_dir is required"):
        apply_preset(TrainingConfig(), {"data": {"batch_size": 2}})


def test_the_diff_from_defaults_is_a_preset_that_rebuilds_the_config():
    config = full_config()
    diff = diff_from_defaults(config)
    assert "version" not in diff and "strategy" in diff["run"] and "precision" not in diff["run"]
    assert diff["data"]["max_seconds"] is None and diff["optimizer"]["betas"] == [0.8, 0.95]
    assert apply_preset(TrainingConfig(), diff) == config
    assert diff_from_defaults(TrainingConfig()) == {}


# --- migrations ------------------------------------------------------------------------------------


def rename_learning_rate(data: dict) -> dict:
    """A fake version-0 -> 1 migration: [optimizer] learning_rate became lr."""
    optimizer = data.get("optimizer")
    if isinstance(optimizer, dict) and "learning_rate" in optimizer:
        optimizer["lr"] = optimizer.pop("learning_rate")
    return data


def test_an_old_file_is_migrated_when_loaded(tmp_path, monkeypatch):
    monkeypatch.setitem(MIGRATIONS, 0, rename_learning_rate)
    path = tmp_path / "old.toml"
    path.write_text('version = 0\n[data]\ntensors_dir = "t"\n[optimizer]\nlearning_rate = 3e-4\n', encoding="utf-8")
    config = load_config(path)
    assert config.optimizer.lr == 3e-4 and config.version == CONFIG_VERSION
    saved = save_config(config, tmp_path / "new.toml").read_text(encoding="utf-8")
    assert "version = 1" in saved and "lr = 0.0003" in saved and "learning_rate" not in saved


def test_a_migration_also_applies_to_presets_and_leaves_its_input(monkeypatch):
    monkeypatch.setitem(MIGRATIONS, 0, rename_learning_rate)
    preset = {"version": 0, "optimizer": {"learning_rate": 5e-5}}
    assert apply_preset(config_from_dict(minimal()), preset).optimizer.lr == 5e-5
    assert preset == {"version": 0, "optimizer": {"learning_rate": 5e-5}}


def test_migrations_chain_up_to_the_current_version(tmp_path, monkeypatch):
    calls = []

    def one_to_two(data):
        calls.append(("1->2", data.get("version")))
        data.setdefault("run", {})["epochs"] = data.get("run", {}).pop("num_epochs", 10)
        return data

    def two_to_three(data):
        calls.append(("2->3", data.get("version")))
        data["run"]["epochs"] *= 2
        return data

    monkeypatch.setattr(cfg, "CONFIG_VERSION", 3)
    monkeypatch.setitem(MIGRATIONS, 1, one_to_two)
    monkeypatch.setitem(MIGRATIONS, 2, two_to_three)
    config = config_from_dict(minimal(run={"num_epochs": 4}))  # no version: version 1
    assert calls == [("1->2", None), ("2->3", 2)]
    assert config.run.epochs == 8 and config.version == 3
    path = save_config(config, tmp_path / "config.toml")
    assert path.read_text(encoding="utf-8").count("version = 3") == 1
    calls.clear()
    assert load_config(path) == config and calls == []  # a current file is not migrated again


def test_files_without_a_version_are_version_one_and_need_no_migration(monkeypatch):
    monkeypatch.setitem(MIGRATIONS, 1, lambda data: pytest.fail("no migration runs on a current file"))
    assert config_from_dict(minimal()).version == 1


@pytest.mark.parametrize("version, fragment", [
    (2, "written by a newer trainer (config version 2; this trainer reads up to version 1); update the trainer"),
    (0, "config version 0 is not one this trainer knows (it reads versions 1 to 1)"),
    ("1", "version must be a whole number, found '1'"),
    (True, "version must be a whole number, found True"),
    pytest.param(10**5000, "written by a newer trainer (config version a whole number too large;", id="huge"),
    pytest.param(-10**5000, "config version a whole number too large is not one this trainer", id="-huge"),
])
def test_versions_this_trainer_cannot_read(version, fragment):
    message, _ = problems_of(lambda: config_from_dict(minimal() | {"version": version}, "old.toml"))
    assert message.startswith("old.toml: ") and fragment in message


def test_a_failing_migration_is_a_config_error(monkeypatch):
    monkeypatch.setitem(MIGRATIONS, 0, lambda data: data["optimizer"]["missing"])
    message, _ = problems_of(lambda: config_from_dict(minimal() | {"version": 0}, "old.toml"))
    assert message.startswith("old.toml: cannot migrate the config from version 0 to 1 (KeyError")
    monkeypatch.setitem(MIGRATIONS, 0, lambda data: None)
    message, _ = problems_of(lambda: config_from_dict(minimal() | {"version": 0}, "old.toml"))
    assert "the migration from version 0 returned NoneType, not a dict" in message


# --- paths and devices -----------------------------------------------------------------------------


def test_resolve_paths_makes_folders_absolute(tmp_path):
    config = config_from_dict(minimal(model={"checkpoints_dir": "~/models", "checkpoint": "acestep-v15-base"},
                                      run={"output_dir": "../runs"}))
    resolved = resolve_paths(config, tmp_path / "configs")
    assert resolved.data.tensors_dir == str(tmp_path / "configs" / "tensors")
    assert resolved.run.output_dir == str(tmp_path / "runs")
    assert resolved.model.checkpoints_dir == os.path.expanduser("~/models")
    assert resolved.model.checkpoint == "acestep-v15-base"  # a name or a Hugging Face id: left alone
    assert config.data.tensors_dir == "tensors"  # the input is not changed
    assert resolve_paths(resolved, "/elsewhere") == resolved
    assert resolve_paths(TrainingConfig(), tmp_path).model.checkpoints_dir is None


def test_resolve_paths_makes_a_checkpoint_that_is_a_path_absolute(tmp_path):
    (tmp_path / "ck" / "acestep-v15-turbo").mkdir(parents=True)
    config = config_from_dict(minimal(model={"checkpoint": "ck/acestep-v15-turbo"}))
    resolved = resolve_paths(config, tmp_path)
    assert resolved.model.checkpoint == str(tmp_path / "ck" / "acestep-v15-turbo")  # from any folder, the same model
    assert resolve_paths(resolved, "/elsewhere") == resolved
    hub_id = config_from_dict(minimal(model={"checkpoint": "ACE-Step/acestep-v15-turbo"}))
    assert resolve_paths(hub_id, tmp_path).model.checkpoint == "ACE-Step/acestep-v15-turbo"  # no such path: left


@pytest.mark.parametrize("devices, expected", [
    (1, 1), (3, 3), ("auto", "auto"), ("AUTO", "auto"), ("0,1", [0, 1]), (" 2 , 3 ", [2, 3]), ("1", [1]), ("1,", [1]),
])
def test_parse_devices_gives_what_lightning_takes(devices, expected):
    assert parse_devices(devices) == expected


@pytest.mark.parametrize("devices", [0, -1, "", ",", "0,0", "gpu", "1.5", "-1", True, None, [0]])
def test_parse_devices_refuses_the_rest(devices):
    with pytest.raises(ConfigError, match="run.devices must be"):
        parse_devices(devices)


# --- fuzz: any data gives a valid config or a ConfigError, never another exception ----------------

FIELD_NAMES = [doc.path.split(".")[1] for doc in describe_fields()]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
    | st.sampled_from(["none", "auto", "0,1", "1e-4", "lora", "adamw", "prodigy", "", "null"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
names = st.sampled_from(FIELD_NAMES) | st.text(max_size=10) | st.integers() | st.none()
sections = st.dictionaries(names, json_values, max_size=6) | json_values
any_config = st.dictionaries(st.sampled_from([*SECTIONS, "version"]) | st.text(max_size=10), sections, max_size=7)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(any_config)
def test_fuzz_any_dict_is_a_config_or_a_config_error(data):
    try:
        config = config_from_dict(data)
    except ConfigError as error:
        assert str(error)
        return
    validate(config)


def plausible_value(path: str):
    """Values around the rules of one field: the right type mostly, sometimes not."""
    doc = next(doc for doc in describe_fields() if doc.path == path)
    base = {
        "bool": st.booleans(),
        "int": st.integers(-3, 3) | st.integers(),
        "float": st.floats(-2, 2) | st.floats(),
        "str": st.sampled_from(["auto", "lora", "adamw", "cosine", "ddp", "bf16", "x/y", ""]) | st.text(max_size=8),
        "list[float]": st.lists(st.floats(0, 1), max_size=3),
        "list[str]": st.lists(st.text(max_size=6), max_size=3),
        "int | str": st.integers(-1, 4) | st.sampled_from(["auto", "0,1", "1", "0,0", "x"]),
    }[doc.type.removesuffix(" | None")]
    return base | st.none() | json_values if doc.type.endswith("None") else base | json_values


changes = st.lists(st.sampled_from([doc.path for doc in describe_fields()]), max_size=5, unique=True).flatmap(
    lambda paths: st.tuples(*(st.tuples(st.just(path), plausible_value(path)) for path in paths)))


@FUZZ
@given(changes)
def test_fuzz_near_valid_configs_round_trip_through_toml(tmp_path_factory, changed):
    data = minimal()
    for path, value in changed:
        section, name = path.split(".")
        data.setdefault(section, {})[name] = value
    try:
        config = config_from_dict(data)
    except ConfigError:
        return
    assert config_from_dict(config_to_dict(config)) == config
    folder = tmp_path_factory.mktemp("fuzz")
    assert load_config(save_config(config, folder / "config.toml")) == config


@FUZZ
@given(st.lists(st.tuples(st.sampled_from([doc.path for doc in describe_fields()]) | st.text(max_size=12),
                          st.text(max_size=12)), max_size=4))
def test_fuzz_any_override_text_is_a_config_or_a_config_error(pairs):
    try:
        config = apply_overrides(config_from_dict(minimal()), [f"{key}={value}" for key, value in pairs])
    except ConfigError:
        return
    validate(config)


@FUZZ
@given(changes)
def test_fuzz_validate_accepts_only_configs_that_save_and_load_back_equal(tmp_path_factory, changed):
    config = config_from_dict(minimal())
    for path, value in changed:  # set in code, as the UI might: no parsing in between
        section, name = path.split(".")
        setattr(getattr(config, section), name, value)
    try:
        validate(config)
    except ConfigError:
        return
    folder = tmp_path_factory.mktemp("fuzz")
    assert load_config(save_config(config, folder / "config.toml")) == config
