"""acestep.training.plan: the counts a run will have, as the session and the data loader make them."""

import pytest

from acestep.errors import TrainingError
from acestep.training.config import config_from_dict
from acestep.training.data import EpochBatches
from acestep.training.plan import (
    batches_per_epoch,
    optimizer_steps_per_epoch,
    plan_run,
    split_train_validation,
    total_optimizer_steps,
)


def config(**sections):
    data = {"data": {"tensors_dir": "/data/tensors", "max_seconds": 60, "validation_split": 0.0}}
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return config_from_dict(data)


def test_optimizer_steps_per_epoch_flushes_a_partial_accumulation():
    assert optimizer_steps_per_epoch(17, 4) == 5
    assert optimizer_steps_per_epoch(16, 4) == 4
    assert optimizer_steps_per_epoch(3, 4) == 1
    assert optimizer_steps_per_epoch(17, 1) == 17
    with pytest.raises(TrainingError, match="empty"):
        optimizer_steps_per_epoch(0, 4)
    with pytest.raises(TrainingError):
        optimizer_steps_per_epoch(17, 0)


def test_total_optimizer_steps():
    assert total_optimizer_steps(17, 4, 3) == 15
    assert total_optimizer_steps(17, 4, 3, max_steps=7) == 7
    assert total_optimizer_steps(17, 4, 3, max_steps=100) == 15
    with pytest.raises(TrainingError):
        total_optimizer_steps(17, 4, 0)
    with pytest.raises(TrainingError):
        total_optimizer_steps(17, 4, 3, max_steps=0)


@pytest.mark.parametrize("count, split, held", [(10, 0.2, 2), (10, 0.0, 0), (3, 0.5, 2), (1, 0.5, 0), (4, 0.01, 1)])
def test_validation_split(count, split, held):
    train, val = split_train_validation(count, split, seed=5)
    assert len(val) == held and sorted(train + val) == list(range(count))
    assert split_train_validation(count, split, seed=5) == (train, val)


@pytest.mark.parametrize("samples", [1, 2, 7, 8, 9, 33, 100])
@pytest.mark.parametrize("batch_size", [1, 3, 4])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_batches_per_epoch_is_what_every_process_of_the_loader_gets(samples, batch_size, world_size):
    lengths = [(17 * i) % 50 + 10 for i in range(samples)]
    for group in (True, False):
        for rank in range(world_size):
            loader = EpochBatches(lengths, batch_size, seed=3, epoch=1, group_by_length=group, rank=rank,
                                  world_size=world_size)
            assert batches_per_epoch(samples, batch_size, world_size) == len(loader)


def test_a_plan_counts_songs_batches_steps_and_the_audio_the_crops_show():
    frames = [3000, 1000, 6000, 500, 1500, 2500, 4500, 900, 1200, 3100]  # 25 frames a second; crops of 1500
    plan = plan_run(config(data={"batch_size": 2, "validation_split": 0.2},
                           optimizer={"gradient_accumulation": 2},
                           run={"epochs": 300, "early_stopping_patience": 20}), frames)
    assert (plan.training_samples, plan.validation_samples) == (8, 2)
    assert (plan.batches_per_epoch, plan.steps_per_epoch, plan.total_steps) == (4, 2, 600)
    assert plan.effective_batch == 4
    train, held = split_train_validation(10, 0.2, config().data.validation_seed)
    assert (plan.train_indices, plan.validation_indices) == (tuple(train), tuple(held))  # what the session trains on
    assert plan.training_frames == sum(frames[i] for i in train)
    assert plan.shown_frames == sum(min(frames[i], 1500) for i in train)
    text = plan.describe()
    assert "8 song(s) train, 2 held out for the validation loss" in text
    assert "4 batch(es) of 2, 2 optimizer step(s); effective batch 4 (2 x 2 accumulation). 600 optimizer steps" in text
    assert "Early stopping after 20 epochs without improvement, 40 steps." in text
    shown = round(100 * plan.shown_frames / plan.training_frames)
    assert f"Crops of 60 s show {shown}% of the songs' {plan.training_frames / 25 / 60:.1f} minutes" in text
    [note] = plan.notes()
    assert note.startswith("600 steps is below the 2,000 to 4,000") and "run.epochs=1,000 would give 2,000" in note


def test_a_plan_says_when_max_steps_ends_the_run_and_when_no_epoch_fills_the_accumulation():
    plan = plan_run(config(optimizer={"gradient_accumulation": 8}, run={"epochs": 1000, "max_steps": 2500}),
                    [1000] * 5)
    assert (plan.batches_per_epoch, plan.steps_per_epoch, plan.total_steps) == (5, 1, 1000)
    plan = plan_run(config(optimizer={"gradient_accumulation": 8}, run={"epochs": 1000, "max_steps": 700}),
                    [1000] * 5)
    assert plan.total_steps == 700
    assert "700 optimizer steps in all (run.max_steps stops it after 700.0 of the 1000 epochs)" in plan.describe()
    assert "Crops" not in plan.describe()  # every song is shorter than the crop: all of it is shown
    [note] = plan.notes()  # max_steps set: the user chose the length, only the accumulation is noted
    assert note == ("An epoch has 5 batch(es), fewer than optimizer.gradient_accumulation 8: every step sums 5, so "
                    "the effective batch is 5, not 8. Set optimizer.gradient_accumulation to 5 or less.")


def test_several_processes_share_the_batches_and_too_few_songs_give_no_batch():
    plan = plan_run(config(data={"batch_size": 2}), [900] * 9, world_size=2)
    assert (plan.batches_per_epoch, plan.effective_batch) == (2, 2 * 1 * 2)  # 5 batches: 2 rounds of 2 processes
    assert "2 batch(es) of 2 per process" in plan.describe() and "x 2 processes" in plan.describe()
    with pytest.raises(TrainingError, match=r"/data/tensors gives no training batch: 1 training sample\(s\) for "
                                            r"2 process\(es\) with batch size 1"):
        plan_run(config(), [900], world_size=2)


def test_repeats_pass_over_the_songs_several_times_per_epoch():
    frames = [3000, 1000, 6000, 500]
    once = plan_run(config(data={"batch_size": 2}, run={"epochs": 10}), frames)
    thrice = plan_run(config(data={"batch_size": 2, "repeats": 3}, run={"epochs": 10}), frames)
    assert (once.batches_per_epoch, once.total_steps) == (2, 20)
    assert (thrice.batches_per_epoch, thrice.total_steps) == (6, 60)  # 12 items: 6 batches of 2
    assert thrice.train_indices == once.train_indices and thrice.shown_frames == once.shown_frames
    text = thrice.describe()
    assert "4 song(s) train, none held out for validation. Per epoch: each song 3 times (data.repeats), 6 batch(es)" \
        in text and "minutes per pass, a new crop each pass." in text
    assert "each song" not in once.describe() and "per epoch, a new crop each epoch" in once.describe()
    # one song on two processes: no batch without repeats, a batch each with two
    plan = plan_run(config(data={"repeats": 2}), [900], world_size=2)
    assert plan.batches_per_epoch == 1
    with pytest.raises(TrainingError, match=r"1 training sample\(s\) x 3 repeats for 4 process\(es\)"):
        plan_run(config(data={"repeats": 3}), [900], world_size=4)
