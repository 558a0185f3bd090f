"""The training loop on the tiny model: accumulation and loss reporting, exact resume, stop,
non-finite guard, every optimizer and scheduler, and that training actually learns."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from acestep.errors import PreprocessError, TrainingError
from acestep.export import load_adapter
from acestep.models import load_acestep
from acestep.preprocess.manifest import read_manifest, write_manifest
from acestep.preprocess.tensors import PreprocessedDataset
from acestep.training.config import TrainingConfig, apply_overrides
from acestep.training.data import CroppedSamples, EpochBatches, collate, derived_seed
from acestep.training.plan import split_train_validation
from acestep.training import checkpoint as ckpt
from acestep.training.adapters import saved_lora_name
from acestep.training import loop
from acestep.training.loop import STOP_FILE, train
from acestep.training.optim import OPTIMIZERS, SCHEDULERS, lr_lambda
from acestep.training.step import Objective, batch_loss, validation_loss

from .conftest import write_tensors_dir


def make_config(tmp_path: Path, tensors: Path, dit: Path, *overrides: str) -> TrainingConfig:
    base = [f"data.tensors_dir={tensors}", f"model.checkpoint={dit}", f"run.output_dir={tmp_path / 'runs'}",
            "run.name=run", "adapter.rank=4", "adapter.alpha=8", "adapter.dropout=0.1", "optimizer.warmup_steps=2",
            "optimizer.lr=1e-3", "run.log_every_steps=1", "run.epochs=2", "data.max_seconds=1.2"]
    return apply_overrides(TrainingConfig(), base + list(overrides))


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def train_stopped_after(config: TrainingConfig, step: int):
    """`train(config)` asked to stop, as Stop or Ctrl+C does, when step `step` has logged."""
    requests = []

    def stop_after_step(event):
        if event["type"] == "log" and event["step"] == step:
            requests[0]()

    return train(config, listeners=[stop_after_step], stop_signal=requests.append)


def adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """The weights of an adapter folder (PEFT's file, or LoKr's)."""
    [weights] = folder.glob("*.safetensors")
    return load_file(weights)


def test_accumulation_steps_and_logged_per_sample_loss(tmp_path, tensors_17, tiny_dit):
    # lr 1e-30: the adapter moves by ~1e-30, so every batch's loss can be recomputed independently.
    config = make_config(tmp_path, tensors_17, tiny_dit, "run.epochs=1", "optimizer.gradient_accumulation=4",
                         "optimizer.lr=1e-30", "optimizer.weight_decay=0", "adapter.dropout=0")
    result = train(config)
    logs = [e for e in events(result.run_dir) if e["type"] == "log"]
    assert result.step == 5 and [e["step"] for e in logs] == [1, 2, 3, 4, 5]  # 4 + 4 + 4 + 4 + 1 (flushed)

    bundle = load_acestep(tiny_dit, dtype=torch.float32, components=("transformer",))
    samples = PreprocessedDataset(tensors_17)
    dataset = CroppedSamples(samples, range(17), max_frames=30, seed=config.run.seed)
    order = EpochBatches(dataset.frames(), 1, config.run.seed, 0).local_batches()
    objective = Objective("logit_normal", -0.4, 1.0, 0.15, None)
    per_batch = []
    for index, positions in enumerate(order):
        batch = collate([dataset[p] for p in positions])
        generator = torch.Generator().manual_seed(derived_seed(config.run.seed, 0, 0, index))
        with torch.no_grad():
            _, per_sample = batch_loss(bundle.transformer, batch, objective, bundle.silence_latent,
                                       bundle.null_condition_emb, generator, torch.float32)
        per_batch.append(per_sample.item())
    expected = [sum(per_batch[i:i + 4]) / len(per_batch[i:i + 4]) for i in range(0, 17, 4)]
    assert [e["loss"] for e in logs] == pytest.approx(expected, abs=1e-6)
    epoch = next(e for e in events(result.run_dir) if e["type"] == "epoch")
    assert epoch["loss"] == pytest.approx(sum(per_batch) / 17, abs=1e-6)
    # without validation, best/ is picked on the training loss's moving average, and says so
    best = next(e for e in events(result.run_dir) if e["type"] == "best")
    assert best["loss"] == epoch["loss"]
    assert best["message"].endswith(f"(training loss averaged over the last 1 epoch(s) {epoch['loss']:.5f})")


RESUMED = {"weights": (), "moving-average": ("optimizer.ema_decay=0.8",), "dora": ("adapter.type=dora",),
           "lokr": ("adapter.type=lokr", "adapter.dropout=0")}


def old_training_state(new_training_state):
    """`Trainer.training_state` as checkpoints held it before 2026-11-28: the weights, and the
    moving average, in the state as well as in the adapter folder."""
    def training_state(self):
        state = new_training_state(self)
        state["adapter"] = self.s.adapter.state_dict()
        if self.s.average is not None:
            state["average"] = self.s.average.state()
        return state

    return training_state


# every adapter kind in today's layout; the old layout (read the same way for every kind) with and without an average
RESUMES = [(settings, "current") for settings in RESUMED] + [(settings, "before-2026-11-28")
                                                             for settings in ("weights", "moving-average")]


@pytest.mark.parametrize("settings, checkpoints", RESUMES, ids=[f"{s}-{c}" for s, c in RESUMES])
def test_resume_after_a_stop_gives_bit_identical_adapter_and_loss_curve(tmp_path, tensors_17, tiny_dit, settings,
                                                                        checkpoints, monkeypatch):
    overrides = ("run.epochs=3", "optimizer.gradient_accumulation=2", "data.batch_size=2", "run.save_every_epochs=0",
                 *RESUMED[settings])
    straight = train(make_config(tmp_path / "a", tensors_17, tiny_dit, *overrides))

    interrupted = make_config(tmp_path / "b", tensors_17, tiny_dit, *overrides)
    if checkpoints != "current":
        monkeypatch.setattr(loop.Trainer, "training_state", old_training_state(loop.Trainer.training_state))
    first = train_stopped_after(interrupted, 5)
    monkeypatch.undo()
    [checkpoint] = ckpt.complete_checkpoints(first.run_dir)[-1:]
    state = ckpt.read_checkpoint(checkpoint)
    if checkpoints == "current":  # the weights once: the adapter folder holds what the run hands out
        assert ("adapter" in state) == (settings == "moving-average")  # ... which, then, is the average
        assert "average" not in state.get("average", {})
    else:
        shutil.rmtree(checkpoint / "adapter")  # an old checkpoint resumes from its state alone
    assert first.status == "stopped" and first.step == 5
    assert not (first.run_dir / "final").exists()
    second = train(interrupted, resume=first.run_dir)
    assert second.status == "completed" and second.step == straight.step
    a, b = adapter_tensors(straight.run_dir / "final"), adapter_tensors(second.run_dir / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    curve = [(e["step"], e["loss"], e["grad_norm"], e["grad_norm_max"]) for e in events(straight.run_dir)
             if e["type"] == "log"]
    resumed = [(e["step"], e["loss"], e["grad_norm"], e["grad_norm_max"]) for e in events(second.run_dir)
               if e["type"] == "log"]
    assert resumed == curve and all(norm > 0 for _, _, norm, _ in curve)


def test_a_resume_from_an_older_checkpoint_goes_on_from_it_and_sets_the_later_work_aside(tmp_path, tensors_17,
                                                                                          tiny_dit):
    """Resuming from checkpoint N of a run that went further: the later checkpoints and final/ move
    to superseded/, so the next plain resume continues the new training, not the old one's end."""
    config = make_config(tmp_path, tensors_17, tiny_dit, "run.epochs=1", "run.save_every_steps=1",
                         "run.keep_checkpoints=3", "optimizer.warmup_steps=0")
    first = train(config)
    assert first.status == "completed" and first.step == 17  # batch 1: 17 steps
    older = ckpt.complete_checkpoints(first.run_dir)[0]  # step 15 of the kept 15, 16, 17
    branch = apply_overrides(config, ["optimizer.scheduler=constant"])
    requests = []

    def stop_after_step_16(event):
        if event["type"] == "log" and event["step"] == 16:
            requests[0]()

    second = train(branch, resume=older, listeners=[stop_after_step_16], stop_signal=requests.append)
    assert second.status == "stopped" and second.step == 16
    [aside] = (first.run_dir / "superseded").iterdir()
    assert sorted(p.name for p in (aside / "checkpoints").iterdir()) == ["step-000016", "step-000017"]
    assert (aside / "final").is_dir() and not (first.run_dir / "final").exists()
    assert ckpt.resolve_resume(first.run_dir)[1].name == "step-000016"  # the new training's, not the old 17
    warnings = [e["message"] for e in events(first.run_dir) if e["type"] == "warning"]
    assert any("resumed from step 15: what the run had written after it" in w and str(aside) in w for w in warnings)
    third = train(branch, resume=first.run_dir)
    assert third.status == "completed" and third.step == 17 and (first.run_dir / "final").is_dir()


def test_an_abort_at_once_is_logged_as_a_stop_naming_the_checkpoint_to_resume_from(tmp_path, tensors_17, tiny_dit):
    config = make_config(tmp_path, tensors_17, tiny_dit, "run.epochs=1", "run.save_every_steps=2")

    def abort_after_step_3(event):  # the second Ctrl+C: KeyboardInterrupt inside the step's work
        if event["type"] == "log" and event["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, listeners=[abort_after_step_3])
    run_dir = tmp_path / "runs" / "run"
    last = events(run_dir)[-1]
    assert (last["type"], last["step"]) == ("stop", 3)
    assert last["message"] == f"aborted at step 3 without saving; resume with --resume {run_dir} (from step-000002)"


def test_a_resume_puts_back_the_best_adapter_a_kill_left_moved_aside(tmp_path, tensors_17, tiny_dit):
    """A kill between `best/` being moved aside and the new one renamed in leaves no `best/`; the
    resume puts the previous one back (and deletes the half-written one) before it trains on."""
    config = make_config(tmp_path, tensors_17, tiny_dit, "run.epochs=2", "run.save_every_epochs=0")
    first = train_stopped_after(config, 3)
    shutil.copytree(ckpt.latest_checkpoint(first.run_dir) / "adapter", first.run_dir / ".best.old-99")
    (first.run_dir / ".best.tmp-99").mkdir()  # the new best, half written
    at_start = []

    def look(event):
        if event["type"] == "start":
            at_start.append(sorted(p.name for p in first.run_dir.iterdir() if p.name.startswith((".best", "best"))))

    train(config, resume=first.run_dir, listeners=[look])
    assert at_start[0] == ["best"]  # at the first event of the resumed run already


@pytest.mark.parametrize("minutes", [10, 0])
def test_a_checkpoint_is_saved_when_the_minutes_since_the_last_save_have_passed(tmp_path, tensors_17, tiny_dit,
                                                                                monkeypatch, minutes):
    now = [0.0]
    monkeypatch.setattr(loop, "clock", lambda: now[0])
    minutes_after_step = {3: 10, 5: 9, 6: 1}  # 10 since the start; then 9 (not yet 10 since the save), 1 more

    def pass_time(event):
        if event["type"] == "log":
            now[0] += 60 * minutes_after_step.get(event["step"], 0)

    config = make_config(tmp_path, tensors_17, tiny_dit, "run.epochs=1", "run.max_steps=8", "run.save_every_epochs=0",
                         f"run.save_every_minutes={minutes}")
    result = train(config, listeners=[pass_time])
    saves = [(e["step"], e["message"]) for e in events(result.run_dir) if e["type"] == "checkpoint"]
    timed = [(3, "10 minutes since the last save"), (6, "10 minutes since the last save")] if minutes else []
    assert saves == [(step, f"{reason}: {result.run_dir / 'checkpoints' / f'step-{step:06d}'}")
                     for step, reason in [*timed, (8, "end of training")]]
    assert sorted(folder.name for folder in (result.run_dir / "checkpoints").iterdir()) == [
        f"step-{step:06d}" for step, _ in saves]


def test_stop_file_stops_and_saves(tmp_path, tensors_17, tiny_dit):
    config = make_config(tmp_path, tensors_17, tiny_dit)

    def drop_stop_file(event):
        if event["type"] == "log" and event["step"] == 3:
            (Path(config.run.output_dir) / "run" / STOP_FILE).touch()

    result = train(config, listeners=[drop_stop_file])
    assert result.status == "stopped" and result.step == 3
    assert (result.run_dir / "checkpoints" / "step-000003" / "COMPLETE").is_file()
    assert [e["type"] for e in events(result.run_dir)][-1] == "stop"
    assert (result.run_dir / STOP_FILE).exists()  # left in place: the resume below must clear it
    resumed = train(config, resume=result.run_dir)
    assert resumed.status == "completed" and resumed.step > 3
    assert not (result.run_dir / STOP_FILE).exists()


def test_resume_on_another_dataset_is_refused_unless_forced(tmp_path, tensors_17, tiny_dit):
    tensors = tmp_path / "tensors"
    shutil.copytree(tensors_17, tensors)
    config = make_config(tmp_path, tensors, tiny_dit, "run.epochs=1")
    run = train(config)
    manifest = read_manifest(tensors)
    manifest.samples = manifest.samples[:-1]
    write_manifest(tensors, manifest)
    with pytest.raises(TrainingError, match=r"the dataset .* differs.*to resume anyway, run `acestep-trainer train "
                                            r"--resume .* --force`"):
        train(config, resume=run.run_dir)
    assert train(config, resume=run.run_dir, force=True).status == "completed"


def test_tensors_of_another_checkpoint_are_refused(tmp_path, tensors_17, tiny_checkpoints):
    from acestep.models.tiny import write_tiny_checkpoints

    other = write_tiny_checkpoints(tmp_path / "other", seed=3) / "acestep-v15-turbo"
    with pytest.raises(PreprocessError, match="were made with"):
        train(make_config(tmp_path, tensors_17, other))


def test_non_finite_loss_skips_steps_then_halts(tmp_path, tiny_dit):
    tensors = write_tensors_dir(tmp_path / "tensors", tiny_dit, 6)
    from acestep.preprocess.tensors import read_sample, write_sample

    for entry in read_manifest(tensors).samples:
        item = read_sample(tensors / entry.tensors)
        item["target_latents"][0, 0] = float("nan")
        write_sample(tensors, entry.tensors, item, {})
    before = load_acestep(tiny_dit, dtype=torch.float32, components=("transformer",))
    with pytest.raises(TrainingError, match="not finite for 3 optimizer steps in a row"):
        train(make_config(tmp_path, tensors, tiny_dit, "run.nan_patience=3", "data.max_seconds=none"))
    warnings = [e for e in events(tmp_path / "runs" / "run") if e["type"] == "warning"]
    assert len(warnings) == 3
    # the saved adapter was never updated by a non-finite step: it is still the fresh (zero-update) one
    saved = adapter_tensors(tmp_path / "runs" / "run" / "checkpoints" / "step-000000" / "adapter")
    assert all(torch.isfinite(v).all() for v in saved.values())
    assert before is not None


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_trains(tmp_path, tensors_17, tiny_dit, optimizer):
    lr = "1.0" if optimizer == "prodigy" else "1e-3"
    result = train(make_config(tmp_path, tensors_17, tiny_dit, f"optimizer.name={optimizer}", f"optimizer.lr={lr}",
                               "run.max_steps=3", "run.epochs=1"))
    assert result.status == "completed" and result.step == 3
    assert all(torch.isfinite(v).all() for v in adapter_tensors(result.run_dir / "final").values())


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_scheduler_follows_its_curve(tmp_path, tensors_17, tiny_dit, scheduler):
    result = train(make_config(tmp_path, tensors_17, tiny_dit, f"optimizer.scheduler={scheduler}",
                               "optimizer.gradient_accumulation=4", "run.epochs=2", "optimizer.restarts=2"))
    lrs = [e["lr"] for e in events(result.run_dir) if e["type"] == "log"]
    curve = lr_lambda(scheduler, 2, result.step, 2)
    assert lrs == pytest.approx([1e-3 * curve(step) for step in range(1, result.step + 1)])


def test_training_learns_and_the_lora_changes_the_output(tmp_path, tiny_dit):
    tensors = write_tensors_dir(tmp_path / "tensors", tiny_dit, 4, frames=(24, 24))
    config = make_config(tmp_path, tensors, tiny_dit, "run.epochs=150", "data.batch_size=4", "optimizer.lr=1e-2",
                         "adapter.rank=8", "objective.cfg_dropout=0", "adapter.dropout=0", "run.log_every_steps=50",
                         "optimizer.scheduler=constant", "run.save_every_epochs=0")
    result = train(config)
    epochs = [e["loss"] for e in events(result.run_dir) if e["type"] == "epoch"]
    assert sum(epochs[-10:]) < sum(epochs[:10])

    # At fixed noise and timesteps (the validation loss, on the training samples) the fit is clear.
    bundle = load_acestep(tiny_dit, dtype=torch.float32, components=("transformer",))
    samples = CroppedSamples(PreprocessedDataset(tensors), range(4), None, 0, random_crop=False)
    objective = Objective("logit_normal", -0.4, 1.0, 0.0, None)

    def fixed_loss():
        loader = torch.utils.data.DataLoader(samples, batch_size=4, collate_fn=collate)
        return validation_loss(bundle.transformer, loader, objective, bundle.silence_latent, torch.float32, 7,
                               torch.device("cpu"))

    inputs = {"hidden_states": torch.randn(1, 24, 64), "timestep": torch.tensor([0.5]),
              "timestep_r": torch.tensor([0.5]), "encoder_hidden_states": torch.randn(1, 8, 64),
              "context_latents": torch.randn(1, 24, 128)}
    with torch.no_grad():
        base, base_loss = bundle.transformer(**inputs).sample, fixed_loss()
        load_adapter(bundle.transformer, result.run_dir / "final")
        adapted, trained_loss = bundle.transformer(**inputs).sample, fixed_loss()
    assert trained_loss < 0.92 * base_loss  # 2.149 -> 1.886 here: memorising x0 is what lowers it
    assert (adapted - base).abs().max() > 1e-3
    assert (result.run_dir / "best" / "adapter_config.json").is_file()


def test_with_a_moving_average_the_run_hands_out_and_validates_the_average(tmp_path, tensors_17, tiny_dit):
    """optimizer.ema_decay changes nothing in how the weights train; final/ (like every adapter the
    run writes) holds their average, and the validation loss is the average's."""
    overrides = ("run.epochs=2", "data.batch_size=2", "data.validation_split=0.25", "adapter.dropout=0")
    plain = train(make_config(tmp_path / "plain", tensors_17, tiny_dit, *overrides))
    averaged = train(make_config(tmp_path / "averaged", tensors_17, tiny_dit, *overrides, "optimizer.ema_decay=0.7"))

    def logged(run, kind, key):
        return [e[key] for e in events(run.run_dir) if e["type"] == kind]

    assert logged(averaged, "log", "loss") == logged(plain, "log", "loss")  # the weights train the same
    # the weights: in the plain run's checkpoint folder, in the averaged run's state (its folder holds the average)
    plain_checkpoint, averaged_checkpoint = (ckpt.latest_checkpoint(run.run_dir) for run in (plain, averaged))
    plain_weights = adapter_tensors(plain_checkpoint / "adapter")
    state = ckpt.read_checkpoint(averaged_checkpoint)
    averaged_weights = {saved_lora_name(k): v for k, v in state["adapter"].items()}
    assert plain_weights.keys() == averaged_weights.keys()
    assert all(torch.equal(plain_weights[k], averaged_weights[k]) for k in plain_weights)
    assert state["average"]["updates"] == averaged.step and "average" not in ckpt.read_checkpoint(plain_checkpoint)
    a, b = adapter_tensors(plain.run_dir / "final"), adapter_tensors(averaged.run_dir / "final")
    assert a.keys() == b.keys() and not all(torch.equal(a[k], b[k]) for k in a)
    metadata = json.loads((averaged.run_dir / "final" / "training_metadata.json").read_text())
    assert metadata["ema_decay"] == 0.7 and "ema_decay" not in json.loads(
        (plain.run_dir / "final" / "training_metadata.json").read_text())
    assert "moving average (decay 0.7)" in events(averaged.run_dir)[0]["message"]

    # the last validation loss is final/'s (nothing trains between them), so it is the average's
    config = make_config(tmp_path / "x", tensors_17, tiny_dit, *overrides)
    _, held_out = split_train_validation(17, 0.25, config.data.validation_seed)
    validation_set = CroppedSamples(PreprocessedDataset(tensors_17), held_out, 30, config.run.seed, random_crop=False)
    bundle = load_acestep(tiny_dit, dtype=torch.float32, components=("transformer",))
    load_adapter(bundle.transformer, averaged.run_dir / "final")
    loader = torch.utils.data.DataLoader(validation_set, batch_size=2, collate_fn=collate)
    with torch.no_grad():
        recomputed = validation_loss(bundle.transformer, loader, Objective("logit_normal", -0.4, 1.0, 0.0, None),
                                     bundle.silence_latent, torch.float32, config.data.validation_seed,
                                     torch.device("cpu"))
    assert logged(averaged, "validation", "val_loss")[-1] == pytest.approx(recomputed, rel=1e-5)
    assert logged(averaged, "validation", "val_loss")[-1] != pytest.approx(logged(plain, "validation", "val_loss")[-1],
                                                                           rel=1e-5)


def test_run_folder_holds_config_events_and_tensorboard(tmp_path, tensors_17, tiny_dit):
    from acestep.training.config import load_config

    config = make_config(tmp_path, tensors_17, tiny_dit, "run.epochs=1", "data.validation_split=0.2")
    result = train(config)
    assert load_config(result.run_dir / "config.toml") == config
    kinds = [e["type"] for e in events(result.run_dir)]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert {"log", "epoch", "validation", "checkpoint", "best"} <= set(kinds)
    validation, best = (next(e for e in events(result.run_dir) if e["type"] == kind) for kind in ("validation", "best"))
    assert best["loss"] == validation["val_loss"]
    assert best["message"].endswith(f"(validation loss {validation['val_loss']:.5f})")
    start = events(result.run_dir)[0]["message"]
    assert "logit-normal(μ=-0.4, σ=1)" in start and "trainable parameters" in start and "effective batch 1" in start
    # the attention plan for this device (CPU's flash kernel takes masks and grouped heads)
    assert start.endswith("attention: masked calls on the flash_attention kernel, unmasked calls on the "
                          "flash_attention kernel")
    assert list((result.run_dir / "tensorboard").iterdir())
    with pytest.raises(TrainingError, match="already holds a run"):
        train(config)


def test_validation_is_fixed_and_early_stopping_ends_the_run(tmp_path, tensors_17, tiny_dit):
    # lr 1e-30: nothing changes, so the validation loss (fixed noise and timesteps) is the same every
    # epoch, the moving average never improves, and patience 2 stops after epoch 3.
    config = make_config(tmp_path, tensors_17, tiny_dit, "run.epochs=10", "optimizer.lr=1e-30",
                         "optimizer.weight_decay=0", "data.validation_split=0.25", "run.early_stopping_patience=2")
    result = train(config)
    validations = [e["val_loss"] for e in events(result.run_dir) if e["type"] == "validation"]
    assert result.status == "early_stopped" and result.epoch == 3
    assert len(validations) == 3 and len(set(validations)) == 1
    assert (result.run_dir / "final" / "adapter_config.json").is_file()
    assert "early stop" in events(result.run_dir)[-1]["message"]


def test_gradient_checkpointing_gives_the_same_training(tmp_path, tensors_17, tiny_dit):
    settings = {"off": ["run.gradient_checkpointing=false"], "all": ["run.gradient_checkpointing=true"],
                "half": ["run.gradient_checkpointing=true", "run.gradient_checkpointing_ratio=0.5"]}
    runs = [train(make_config(tmp_path / name, tensors_17, tiny_dit, "run.epochs=1", "run.max_steps=4", *overrides))
            for name, overrides in settings.items()]
    curves = [[e["loss"] for e in events(r.run_dir) if e["type"] == "log"] for r in runs]
    assert curves[0] == pytest.approx(curves[1], abs=1e-6) and curves[0] == pytest.approx(curves[2], abs=1e-6)
    starts = [events(r.run_dir)[0]["message"] for r in runs]
    assert "; gradient checkpointing" not in starts[0] and "; gradient checkpointing of 4 of 4 layers" in starts[1]
    assert "; gradient checkpointing of 2 of 4 layers" in starts[2]


def test_refused_run_leaves_no_folder_and_long_warmup_warns(tmp_path, tensors_17, tiny_dit):
    from acestep.models.tiny import write_tiny_checkpoints

    other = write_tiny_checkpoints(tmp_path / "other", seed=4) / "acestep-v15-turbo"
    with pytest.raises(PreprocessError):
        train(make_config(tmp_path, tensors_17, other))
    assert not (tmp_path / "runs" / "run").exists()  # nothing half-made to trip the next start
    result = train(make_config(tmp_path, tensors_17, tiny_dit, "run.max_steps=3", "optimizer.warmup_steps=5"))
    warnings = [e["message"] for e in events(result.run_dir) if e["type"] == "warning"]
    assert warnings == ["optimizer.warmup_steps (5) is not below the run's 3 optimizer steps: the learning rate "
                        "never reaches optimizer.lr"]


def test_the_next_batch_is_loaded_before_the_optimizer_step_waits_for_the_gpu(tmp_path, tensors_17, tiny_dit,
                                                                            monkeypatch):
    """The loop reads batch i + 1 right after queuing batch i's backward pass, before the optimizer
    step's sync, so the host loads data while the GPU computes; the batches trained are the same."""
    from acestep.training import loop as loop_module
    from acestep.training.session import TrainingSession

    order = []
    epoch_batches, optimizer_step = TrainingSession.epoch_batches, loop_module.Trainer._optimizer_step

    def logged_batches(self, epoch, skip):
        for i, batch in enumerate(epoch_batches(self, epoch, skip)):
            order.append(f"load {i}")
            yield batch

    def logged_step(self):
        order.append("step")
        return optimizer_step(self)

    monkeypatch.setattr(TrainingSession, "epoch_batches", logged_batches)
    monkeypatch.setattr(loop_module.Trainer, "_optimizer_step", logged_step)
    config = make_config(tmp_path, tensors_17, tiny_dit, "run.epochs=1", "data.batch_size=4",
                         "data.validation_split=0", "run.save_every_epochs=0")
    train(config)
    batches = order.count("step")
    assert batches >= 3
    expected = ["load 0"] + [entry for i in range(batches) for entry in
                             ([f"load {i + 1}", "step"] if i + 1 < batches else ["step"])]
    assert order == expected


def test_loader_workers_start_once_per_run_and_load_the_same_crops(tmp_path, tensors_17, tiny_dit, monkeypatch):
    """With data.num_workers the worker processes last the whole run (no new processes and imports
    each epoch) and cut each epoch's crops, so the run trains exactly what a run without them does."""
    import os

    overrides = ("run.epochs=3", "data.batch_size=4", "run.save_every_epochs=0", "optimizer.lr=1e-2")
    serial = train(make_config(tmp_path / "serial", tensors_17, tiny_dit, *overrides))
    loads = tmp_path / "loads.txt"
    original = CroppedSamples.__getitem__

    def recording(self, key):
        with open(loads, "a") as handle:
            handle.write(f"{os.getpid()} {key[0]}\n")
        return original(self, key)

    monkeypatch.setattr(CroppedSamples, "__getitem__", recording)
    workers = train(make_config(tmp_path / "workers", tensors_17, tiny_dit, *overrides, "data.num_workers=2"))
    a, b = adapter_tensors(serial.run_dir / "final"), adapter_tensors(workers.run_dir / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    curve = [[(e["step"], e["loss"]) for e in events(run.run_dir) if e["type"] == "log"] for run in (serial, workers)]
    assert curve[0] == curve[1]
    rows = [line.split() for line in loads.read_text().splitlines()]
    assert sorted(int(epoch) for _, epoch in rows) == [0] * 17 + [1] * 17 + [2] * 17
    by_epoch = [{pid for pid, epoch in rows if epoch == str(e)} for e in range(3)]
    assert len(by_epoch[0]) == 2 and by_epoch[0] == by_epoch[1] == by_epoch[2]  # the same two processes
    assert str(os.getpid()) not in by_epoch[0]
