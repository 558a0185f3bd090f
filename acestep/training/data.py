"""Training data: preprocessed samples, random crops, length-grouped batches, padding masks.

Everything random here is a pure function of (seed, epoch, sample index), so the order of batches
and the crops of an epoch are the same after a resume: the loop only has to remember the epoch
and how many batches of it were done.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Sampler

from acestep.preprocess.tensors import PreprocessedDataset


def derived_seed(*parts: int | str) -> int:
    """A 63-bit seed from any parts (run seed, epoch, sample, step...): stable across runs and
    processes, unlike Python's `hash`."""
    text = "/".join(str(part) for part in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


@dataclass
class TrainingBatch:
    """A padded batch. `frame_mask` [B, T] marks real latent frames; `encoder_mask` [B, L] real
    condition tokens (the model attends over padding anyway; the loss never counts it)."""

    target_latents: torch.Tensor
    frame_mask: torch.Tensor
    encoder_hidden_states: torch.Tensor
    encoder_mask: torch.Tensor
    ids: list[str]

    def to(self, device: torch.device) -> TrainingBatch:
        return TrainingBatch(self.target_latents.to(device, non_blocking=True),
                             self.frame_mask.to(device, non_blocking=True),
                             self.encoder_hidden_states.to(device, non_blocking=True),
                             self.encoder_mask.to(device, non_blocking=True), self.ids)

    def __len__(self) -> int:
        return self.target_latents.shape[0]


class CroppedSamples(Dataset):
    """Samples of a tensors directory, each cut to at most `max_frames` latent frames, each there
    `repeats` times (`data.repeats`; position p is copy p // len(indices) of sample p % len(indices)).

    Training crops start at a random offset drawn from (seed, epoch, index), and for the copies
    after the first from (seed, epoch, index, copy); validation crops (`random_crop=False`) always
    start at 0, so the validation loss is comparable across epochs.
    """

    def __init__(self, samples: PreprocessedDataset, indices: Sequence[int], max_frames: int | None,
                 seed: int, random_crop: bool = True, repeats: int = 1):
        if int(repeats) != repeats or repeats < 1:
            raise ValueError(f"repeats must be a whole number of 1 or more, got {repeats!r}")
        self.samples, self.indices, self.max_frames = samples, list(indices), max_frames
        self.seed, self.random_crop, self.epoch, self.repeats = seed, random_crop, 0, int(repeats)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def frames(self) -> list[int]:
        """Length of each item after cropping (what batching groups by)."""
        lengths = [self.samples.frames[i] for i in self.indices]
        return [min(n, self.max_frames) if self.max_frames else n for n in lengths] * self.repeats

    def __len__(self) -> int:
        return len(self.indices) * self.repeats

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """The item at a position, cropped for the epoch set with `set_epoch`; or at (epoch, position),
        cropped for that epoch (what a loader's worker processes get: they hold their own copy)."""
        epoch, position = key if isinstance(key, tuple) else (self.epoch, key)
        if not 0 <= position < len(self):
            raise IndexError(f"position {position} is outside the {len(self)} items")
        copy, position = divmod(position, len(self.indices))
        index = self.indices[position]
        item = self.samples[index]
        latents = item["target_latents"]
        frames = latents.shape[0]
        if self.max_frames and frames > self.max_frames:
            offset = 0
            if self.random_crop:
                draw = ("crop", epoch, index) + ((copy,) if copy else ())  # the first copy: as without repeats
                offset = random.Random(derived_seed(self.seed, *draw)).randrange(frames - self.max_frames + 1)
            latents = latents[offset: offset + self.max_frames]
        return {"target_latents": latents, "encoder_hidden_states": item["encoder_hidden_states"],
                "encoder_attention_mask": item["encoder_attention_mask"], "id": item["id"]}


def collate(items: list[dict]) -> TrainingBatch:
    """Pad latents and conditions to the longest item with zeros and build the masks."""
    frames = max(item["target_latents"].shape[0] for item in items)
    tokens = max(item["encoder_hidden_states"].shape[0] for item in items)
    batch = len(items)
    first = items[0]
    latents = first["target_latents"].new_zeros(batch, frames, first["target_latents"].shape[1])
    frame_mask = torch.zeros(batch, frames, dtype=torch.bool)
    states = first["encoder_hidden_states"].new_zeros(batch, tokens, first["encoder_hidden_states"].shape[1])
    encoder_mask = torch.zeros(batch, tokens, dtype=torch.bool)
    for row, item in enumerate(items):
        n, length = item["target_latents"].shape[0], item["encoder_hidden_states"].shape[0]
        latents[row, :n] = item["target_latents"]
        frame_mask[row, :n] = True
        states[row, :length] = item["encoder_hidden_states"]
        encoder_mask[row, :length] = item["encoder_attention_mask"].bool()
    return TrainingBatch(latents.float(), frame_mask, states, encoder_mask, [item["id"] for item in items])


def _apart_from(order: list[int], positions: list[int], samples: int, batch_size: int) -> list[int]:
    """`positions` (the next pass) with its first items swapped, where needed, for later ones so that
    the batch they share with the end of `order` holds no second copy of a sample (position p is a
    copy of sample p % samples), as far as the pass has other samples to offer."""
    shared = len(order) % batch_size
    if not shared:
        return positions
    taken, head = {p % samples for p in order[-shared:]}, batch_size - shared
    for i in range(min(head, len(positions))):
        if positions[i] % samples in taken:
            free = next((j for j in range(head, len(positions)) if positions[j] % samples not in taken), None)
            if free is None:
                break
            positions[i], positions[free] = positions[free], positions[i]
    return positions


class EpochBatches(Sampler[list[int]]):
    """The batches of one epoch for one process, as lists of dataset positions.

    With `group_by_length`, positions are shuffled, cut into windows of 32 batches, sorted by
    length inside each window and batched, then the batches are shuffled: batches hold similar
    lengths (little padding) while the order stays random. Under DDP every process gets every
    `world_size`-th batch; the last incomplete round is dropped so all processes take the same
    number of steps. `skip` drops the first batches of the epoch (resume).

    With `passes` above 1 (`data.repeats`: the positions are that many copies of the samples, as
    `CroppedSamples` lays them out), each pass over the samples is shuffled and grouped on its own
    and the passes follow one another before the batches are cut: the copies of a sample, which
    have the same length, are not sorted next to each other into one batch.
    """

    WINDOW_BATCHES = 32

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                 group_by_length: bool = True, rank: int = 0, world_size: int = 1, skip: int = 0,
                 passes: int = 1):
        if passes < 1 or len(lengths) % passes:
            raise ValueError(f"{len(lengths)} positions are not {passes} passes over the same samples")
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, epoch
        self.group_by_length, self.rank, self.world_size, self.skip = group_by_length, rank, world_size, skip
        self.passes = passes

    def all_batches(self) -> list[list[int]]:
        """Every process's batches for this epoch, in order (before sharding)."""
        samples = len(self.lengths) // self.passes
        rng = random.Random(derived_seed(self.seed, "order", self.epoch))
        order = []
        for copy in range(self.passes):  # one pass: the order of a run without repeats
            positions = [copy * samples + i for i in range(samples)]
            rng.shuffle(positions)
            if self.group_by_length:
                window = self.batch_size * self.WINDOW_BATCHES
                positions = [p for start in range(0, len(positions), window)
                             for p in sorted(positions[start:start + window], key=lambda q: self.lengths[q])]
            order += _apart_from(order, positions, samples, self.batch_size)
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.group_by_length:
            rng.shuffle(batches)
        return batches

    def local_batches(self) -> list[list[int]]:
        batches = self.all_batches()
        rounds = len(batches) // self.world_size if self.world_size > 1 else len(batches)
        return batches[self.rank: rounds * self.world_size: self.world_size]

    def __len__(self) -> int:
        return max(0, len(self.local_batches()) - self.skip)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.local_batches()[self.skip:])


class EpochKeyedBatches(Sampler[list[tuple[int, int]]]):
    """The batch sampler of a loader that lasts the whole run: the batches of the epoch last set
    with `use`, each position keyed with its epoch, `(epoch, position)`. Worker processes kept from
    one epoch to the next (`persistent_workers`, no new processes and imports per epoch: seconds
    on Windows) hold their own copy of the dataset, which never sees `set_epoch`; the key tells
    them which epoch's crop to cut."""

    def __init__(self):
        self.batches: EpochBatches | None = None

    def use(self, batches: EpochBatches) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches) if self.batches is not None else 0

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        if self.batches is None:
            return iter(())
        epoch = self.batches.epoch
        return ([(epoch, position) for position in batch] for batch in self.batches)


class Lookahead:
    """Iterate over `items`, loading each next item when the loop calls `prefetch()` instead of at
    the top of the next iteration. The training loop prefetches right after it has queued a batch's
    backward pass: the next batch is read and collated on the host while the GPU still runs that
    backward, instead of after the optimizer step's sync, when the GPU would wait for it. The order
    and the items are those of `items`; nothing is read twice or skipped."""

    _EMPTY = object()

    def __init__(self, items):
        self._items = iter(items)
        self._next = self._EMPTY

    def prefetch(self) -> None:
        """Load the next item now (once; a second call before it is taken does nothing)."""
        if self._next is self._EMPTY:
            self._next = next(self._items, StopIteration)

    def __iter__(self) -> Iterator:
        while True:
            self.prefetch()
            item, self._next = self._next, self._EMPTY
            if item is StopIteration:
                return
            yield item
