"""Crops, batches and masks: deterministic per (seed, epoch), resumable, padding marked."""

import pytest
import torch

from acestep.training.data import CroppedSamples, EpochBatches, collate, derived_seed


class FakeSamples:
    """Stands in for PreprocessedDataset: sample i has 10 + 7*i frames whose values are the frame index."""

    def __init__(self, count=6):
        self.frames = [10 + 7 * i for i in range(count)]

    def __len__(self):
        return len(self.frames)

    def __getitem__(self, index):
        n = self.frames[index]
        return {"target_latents": torch.arange(n, dtype=torch.float32)[:, None].expand(n, 64).clone(),
                "encoder_hidden_states": torch.ones(5 + index, 8), "encoder_attention_mask": torch.ones(5 + index),
                "id": f"s{index}", "frames": n}


def test_derived_seed_is_stable_and_distinct():
    assert derived_seed(42, "crop", 0, 3) == derived_seed(42, "crop", 0, 3)
    assert derived_seed(42, "crop", 0, 3) != derived_seed(42, "crop", 1, 3)
    assert 0 <= derived_seed("x") < 2**63


def test_random_crops_depend_on_epoch_and_repeat_for_a_seed():
    data = CroppedSamples(FakeSamples(), range(6), max_frames=12, seed=1)
    data.set_epoch(0)
    first = [data[i]["target_latents"][0, 0].item() for i in range(6)]
    again = [data[i]["target_latents"][0, 0].item() for i in range(6)]
    data.set_epoch(1)
    other = [data[i]["target_latents"][0, 0].item() for i in range(6)]
    assert first == again and first != other
    assert all(data[i]["target_latents"].shape[0] == min(12, 10 + 7 * i) for i in range(6))
    assert data.frames() == [10, 12, 12, 12, 12, 12]


def test_an_epoch_keyed_item_is_the_crop_of_that_epoch_whatever_set_epoch_says():
    from acestep.training.data import EpochKeyedBatches

    data = CroppedSamples(FakeSamples(), range(6), max_frames=12, seed=1)
    data.set_epoch(1)
    epoch_1 = [data[i]["target_latents"][0, 0].item() for i in range(6)]
    data.set_epoch(0)  # what a worker process's copy of the dataset still says
    assert [data[(1, i)]["target_latents"][0, 0].item() for i in range(6)] == epoch_1
    sampler = EpochKeyedBatches()
    assert list(sampler) == [] and len(sampler) == 0
    batches = EpochBatches(data.frames(), 4, seed=1, epoch=1, skip=1)
    sampler.use(batches)
    assert list(sampler) == [[(1, p) for p in batch] for batch in batches] and len(sampler) == len(batches) == 1


def test_repeats_give_each_sample_several_items_with_their_own_crops():
    once = CroppedSamples(FakeSamples(), [5, 3, 4], max_frames=12, seed=1)
    data = CroppedSamples(FakeSamples(), [5, 3, 4], max_frames=12, seed=1, repeats=4)
    assert len(data) == 12 and data.frames() == once.frames() * 4
    assert [data[p]["id"] for p in range(12)] == ["s5", "s3", "s4"] * 4
    starts = [data[p]["target_latents"][0, 0].item() for p in range(12)]
    assert starts[:3] == [once[p]["target_latents"][0, 0].item() for p in range(3)]  # copy 0: as without repeats
    copies_of_s5 = starts[0::3]  # 45 frames: 34 possible starts, four draws
    assert len(set(copies_of_s5)) > 1
    assert [data[(0, p)]["target_latents"][0, 0].item() for p in range(12)] == starts  # keyed by (epoch, position)
    with pytest.raises(IndexError, match="position 12 is outside the 12 items"):
        data[12]
    with pytest.raises(ValueError, match="repeats must be a whole number of 1 or more, got 0"):
        CroppedSamples(FakeSamples(), [1], max_frames=12, seed=1, repeats=0)


def test_validation_crops_start_at_zero():
    data = CroppedSamples(FakeSamples(), range(6), max_frames=12, seed=1, random_crop=False)
    assert all(data[i]["target_latents"][0, 0].item() == 0 for i in range(6))


def test_collate_pads_with_masks():
    data = CroppedSamples(FakeSamples(), range(6), max_frames=None, seed=1)
    batch = collate([data[0], data[2]])
    assert batch.target_latents.shape == (2, 24, 64)
    assert batch.frame_mask.sum(dim=1).tolist() == [10, 24]
    assert batch.target_latents[0, 10:].abs().sum() == 0
    assert batch.encoder_hidden_states.shape == (2, 7, 8)
    assert batch.encoder_mask.sum(dim=1).tolist() == [5, 7]
    assert batch.ids == ["s0", "s2"]


def test_epoch_batches_cover_every_sample_once_and_group_lengths():
    lengths = [((i * 37) % 101) + 1 for i in range(64)]
    batches = EpochBatches(lengths, batch_size=4, seed=3, epoch=0).all_batches()
    assert sorted(p for b in batches for p in b) == list(range(64))
    # grouped: the spread of lengths inside a batch is far below the spread overall
    spread = sum(max(lengths[p] for p in b) - min(lengths[p] for p in b) for b in batches) / len(batches)
    assert spread < 15
    assert EpochBatches(lengths, 4, 3, 1).all_batches() != batches


@pytest.mark.parametrize("group", [True, False])
def test_with_repeats_the_copies_of_a_song_do_not_fill_a_batch_together(group):
    """5 songs shorter than the crop (distinct lengths), 10 repeats, batches of 2: sorted by length
    over all 50 positions, nearly every batch held two copies of one song, the same crop twice.
    Pass by pass, a batch holds two songs; the epoch has the batches the plan counts."""
    lengths = [11, 23, 17, 30, 14] * 10
    batches = EpochBatches(lengths, 2, seed=4, epoch=3, group_by_length=group, passes=10).all_batches()
    assert sorted(p for batch in batches for p in batch) == list(range(50)) and len(batches) == 25
    assert all(len({p % 5 for p in batch}) == len(batch) for batch in batches)
    for samples, batch_size, passes, seed in [(s, b, r, seed) for s in (3, 5, 8, 33) for b in (1, 2, 3)
                                              for r in (2, 3, 7) for seed in range(4)]:
        many = EpochBatches([(7 * i) % 13 + 5 for i in range(samples)] * passes, batch_size, seed=seed, epoch=1,
                            group_by_length=group, passes=passes).all_batches()
        assert sorted(p for batch in many for p in batch) == list(range(samples * passes))
        assert all(len({p % samples for p in batch}) == len(batch) for batch in many), (samples, batch_size, passes)
    with pytest.raises(ValueError, match="50 positions are not 3 passes"):
        EpochBatches(lengths, 2, seed=4, epoch=3, passes=3)


def test_one_pass_keeps_the_order_of_a_run_without_repeats():
    lengths = [(17 * i) % 50 + 10 for i in range(40)]
    for group in (True, False):
        assert EpochBatches(lengths, 3, seed=9, epoch=2, group_by_length=group, passes=1).all_batches() == \
            EpochBatches(lengths, 3, seed=9, epoch=2, group_by_length=group).all_batches()
    # pinned (computed before repeats existed): a resumed run gets the batches it had
    assert EpochBatches(lengths[:8], 2, seed=9, epoch=2, group_by_length=False).all_batches() == \
        [[4, 0], [6, 3], [7, 1], [5, 2]]
    assert EpochBatches(lengths, 4, seed=9, epoch=2).all_batches()[:3] == \
        [[5, 8, 11, 14], [19, 22, 25, 28], [29, 32, 35, 38]]


def test_skip_resumes_inside_an_epoch():
    lengths = list(range(1, 18))
    full = list(EpochBatches(lengths, 1, seed=9, epoch=2))
    assert list(EpochBatches(lengths, 1, seed=9, epoch=2, skip=5)) == full[5:]
    assert len(EpochBatches(lengths, 1, seed=9, epoch=2, skip=5)) == 12


def test_ranks_get_disjoint_equal_shares():
    lengths = list(range(1, 12))  # 11 batches of 1: two ranks train 5 each, the last round is dropped
    rank0 = EpochBatches(lengths, 1, 0, 0, rank=0, world_size=2).local_batches()
    rank1 = EpochBatches(lengths, 1, 0, 0, rank=1, world_size=2).local_batches()
    assert len(rank0) == len(rank1) == 5
    assert not {p for b in rank0 for p in b} & {p for b in rank1 for p in b}


def test_lookahead_yields_every_item_in_order_and_loads_each_once():
    from acestep.training.data import Lookahead

    loaded = []

    def items():
        for i in range(4):
            loaded.append(i)
            yield i

    ahead = Lookahead(items())
    seen = []
    for item in ahead:
        seen.append(item)
        ahead.prefetch()
        ahead.prefetch()  # a second call before the item is taken loads nothing more
        assert loaded == list(range(min(item + 2, 4)))  # the next one is in, not the one after
    assert seen == [0, 1, 2, 3] and loaded == [0, 1, 2, 3]
    assert list(Lookahead([])) == [] and list(Lookahead(iter([7]))) == [7]


def test_lookahead_raises_the_loading_error_at_prefetch():
    from acestep.training.data import Lookahead

    def items():
        yield 0
        raise OSError("damaged.safetensors")

    ahead = Lookahead(items())
    assert next(iter(ahead)) == 0
    with pytest.raises(OSError, match="damaged"):
        ahead.prefetch()
