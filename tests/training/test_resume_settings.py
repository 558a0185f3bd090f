"""A resume with changed settings: what is refused, what is applied and said, and that the run's
config.toml then holds what is in force."""

import pytest

from acestep.errors import TrainingError
from acestep.training.config import apply_overrides, load_config
from acestep.training.loop import train
from acestep.training.resume_settings import changed_settings

from .test_loop import events, make_config


def test_changed_settings_lists_each_difference_in_schema_order_without_the_run_folder(tmp_path):
    saved = apply_overrides(make_config(tmp_path, tmp_path / "t", tmp_path / "dit"), ["run.name=a"])
    current = apply_overrides(saved, ["run.name=b", "run.output_dir=elsewhere", "run.epochs=9",
                                      "optimizer.warmup_steps=7", "adapter.dropout=0"])
    assert changed_settings(saved, current) == {"adapter.dropout": (0.1, 0.0), "optimizer.warmup_steps": (2, 7),
                                                "run.epochs": (2, 9)}
    assert changed_settings(saved, saved) == {}


def test_a_finished_run_resumed_with_more_epochs_trains_them_and_keeps_the_new_settings(tmp_path, tensors_17,
                                                                                         tiny_dit):
    config = make_config(tmp_path, tensors_17, tiny_dit, "run.epochs=1", "data.batch_size=4")
    first = train(config)
    assert first.status == "completed" and (first.step, first.epoch) == (5, 1)
    longer = apply_overrides(config, ["run.epochs=2", "run.name=ignored"])
    second = train(longer, resume=first.run_dir)
    assert second.status == "completed" and (second.step, second.epoch) == (10, 2)
    warning = next(e for e in events(first.run_dir) if e["type"] == "warning")
    assert warning["step"] == 5 and warning["message"] == (
        "resumed with changed settings: run.epochs 1 -> 2; they apply from here on and config.toml now holds them "
        "(the learning rate follows the new schedule from here, and may jump)")
    from acestep.ui.run_progress import progress_markdown

    # after the resumed run's start, so the Train tab lists it with the run's other warnings
    assert "⚠ step 5: resumed with changed settings: run.epochs 1 -> 2" in progress_markdown(events(first.run_dir))
    kept = load_config(first.run_dir / "config.toml")
    assert kept.run.epochs == 2 and kept.run.name == "run"  # the run folder's own name, not the --set one
    # a later resume with the run's own settings (as the Train tab does) changes nothing, and says only
    # that the run has nothing left to train
    third = train(kept, resume=first.run_dir)
    assert (third.step, third.epoch) == (10, 2)
    warnings = [e["message"] for e in events(first.run_dir) if e["type"] == "warning"]
    # the finished run's final/ (step 5) made way for the longer training's, and the second resume said so
    assert warnings[1].startswith("resumed from step 5: what the run had written after it")
    assert len(warnings) == 3 and warnings[2] == (
        "the run had already finished (step 10, epoch 2): nothing is left to train. To train longer, resume with a "
        "larger run.epochs (--set run.epochs=N) or run.max_steps")


@pytest.mark.parametrize("override, fragment", [
    ("adapter.rank=8", "adapter.rank 4 -> 8"),
    ("optimizer.lr=0.0005", "optimizer.lr 0.001 -> 0.0005"),
    ("optimizer.name=adafactor", "optimizer.name 'adamw' -> 'adafactor'"),
    ("optimizer.ema_decay=0.99", "optimizer.ema_decay none -> 0.99"),  # a run without an average has none saved
])
def test_settings_the_checkpoint_holds_cannot_change_on_resume(tmp_path, tensors_17, tiny_dit, override, fragment):
    config = make_config(tmp_path, tensors_17, tiny_dit, "run.epochs=1", "data.batch_size=17")
    run = train(config)
    before = (run.run_dir / "config.toml").read_text()
    changed = apply_overrides(config, [override, "run.epochs=2"])
    with pytest.raises(TrainingError, match=f"Cannot resume .* with {fragment}: the checkpoint holds") as caught:
        train(changed, resume=run.run_dir, force=True)  # not even with --force
    assert "Start a new run with these settings" in str(caught.value)
    assert (run.run_dir / "config.toml").read_text() == before
    assert [e["type"] for e in events(run.run_dir)].count("start") == 1  # refused before the run started again


def test_a_change_of_the_data_order_needs_force(tmp_path, tensors_17, tiny_dit):
    config = make_config(tmp_path, tensors_17, tiny_dit, "run.epochs=1", "data.batch_size=17")
    run = train(config)
    changed = apply_overrides(config, ["data.batch_size=9", "run.epochs=2"])
    with pytest.raises(TrainingError, match="with data.batch_size 17 -> 9: the order and the crops of the data would "
                                            "differ .*to resume anyway, run `acestep-trainer train "
                                            "--resume .* --force` with them"):
        train(changed, resume=run.run_dir)
    resumed = train(changed, resume=run.run_dir, force=True)
    assert (resumed.step, resumed.epoch) == (3, 2)  # 1 step of 17, then 2 of 9 and 8
    warning = next(e["message"] for e in events(run.run_dir) if e["type"] == "warning" and "resumed" in e["message"])
    assert warning.startswith("resumed with changed settings: data.batch_size 17 -> 9, run.epochs 1 -> 2;")
    assert "(forced: the data order differs from the run's so far)" in warning
    assert load_config(run.run_dir / "config.toml").data.batch_size == 9


def test_a_change_of_the_repeats_needs_force_too(tmp_path, tensors_17, tiny_dit):
    """data.repeats decides how many batches an epoch has and which copy a position is: like the
    batch size, changing it on resume changes the data a resumed epoch trains on."""
    run = train(make_config(tmp_path, tensors_17, tiny_dit, "run.epochs=1", "data.batch_size=17"))
    changed = apply_overrides(load_config(run.run_dir / "config.toml"), ["data.repeats=2", "run.epochs=2"])
    with pytest.raises(TrainingError, match="with data.repeats 1 -> 2: the order and the crops of the data would "
                                            "differ .*to resume anyway, run `acestep-trainer train "
                                            "--resume .* --force` with them"):
        train(changed, resume=run.run_dir)


def test_an_edit_of_the_run_s_config_toml_is_compared_with_what_the_checkpoint_trained_with(tmp_path, tensors_17,
                                                                                          tiny_dit):
    from acestep.training.config import save_config

    config = make_config(tmp_path, tensors_17, tiny_dit, "run.epochs=1", "data.batch_size=17")
    run = train(config)
    own = run.run_dir / "config.toml"
    save_config(apply_overrides(load_config(own), ["adapter.rank=8"]), own)  # edited by hand, then resumed as is
    with pytest.raises(TrainingError, match="with adapter.rank 4 -> 8: the checkpoint holds"):
        train(load_config(own), resume=run.run_dir)
    save_config(apply_overrides(config, ["run.epochs=2"]), own)
    resumed = train(load_config(own), resume=run.run_dir)
    assert (resumed.step, resumed.epoch) == (2, 2)
    assert any(e["type"] == "warning" and e["message"].startswith("resumed with changed settings: run.epochs 1 -> 2;")
               for e in events(run.run_dir))
