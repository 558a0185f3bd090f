"""What loading one batch costs the training process: read, crop and pad (collate), on a CPU.

    env/bin/python benchmarks/data_loading.py --batch 8 --seconds 60

With `data.num_workers` 0 (the default) the trainer reads each batch in its own process, right
after it has queued the previous batch's backward pass (`acestep.training.data.Lookahead`): the
read overlaps the GPU's work as long as it takes less than that backward pass. The samples here
are what preprocessing on a GPU writes for 4-minute songs (6000 latent frames in fp32, 600
condition tokens at the 2B model's width in bf16), read from a tensors folder in the page cache;
the batches are a training epoch's (`EpochBatches`: length grouping, random crops of `--seconds`),
through a loader built as the session builds it with no worker processes. Reported: the median
and the slowest time per batch, after each epoch's first.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import model_config, write_samples
from torch.utils.data import DataLoader

from acestep.models.config import parse_model_config
from acestep.training.data import CroppedSamples, EpochBatches, EpochKeyedBatches, collate
from acestep.training.plan import FRAMES_PER_SECOND

CONDITION_WIDTH = parse_model_config(model_config("2b")).encoder_hidden_size  # the width the 2B DiT's conditions have


def batch_seconds(batch: int, seconds: float, songs: int, song_frames: int, tokens: int,
                  width: int = CONDITION_WIDTH, epochs: int = 2) -> list[float]:
    """Seconds the loader took for each batch after the first of each of `epochs` epochs."""
    with tempfile.TemporaryDirectory() as folder:
        samples = write_samples(Path(folder), songs, song_frames, width, tokens)
        data = CroppedSamples(samples, range(songs), int(seconds * FRAMES_PER_SECOND), seed=0)
        sampler = EpochKeyedBatches()
        loader = DataLoader(data, batch_sampler=sampler, collate_fn=collate)
        times = []
        for epoch in range(epochs):
            sampler.use(EpochBatches(data.frames(), batch, seed=0, epoch=epoch))
            start = time.perf_counter()
            for index, _ in enumerate(loader):
                now = time.perf_counter()
                if index:
                    times.append(now - start)
                start = now
        return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0, help="crop length (data.max_seconds)")
    parser.add_argument("--songs", type=int, default=64, help="samples in the tensors folder")
    parser.add_argument("--song-seconds", type=float, default=240.0, help="length of each sample")
    parser.add_argument("--tokens", type=int, default=600, help="condition tokens of each sample")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    times = batch_seconds(args.batch, args.seconds, args.songs,
                          int(args.song_seconds * FRAMES_PER_SECOND), args.tokens)
    print(f"batch {args.batch} x {args.seconds:g} s crops of {args.song_seconds:g} s songs, {args.tokens} condition "
          f"tokens (bf16, width {CONDITION_WIDTH}), {args.threads} thread(s): "
          f"median {statistics.median(times) * 1e3:.1f} ms per batch, slowest {max(times) * 1e3:.1f} ms "
          f"({len(times)} batches)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
