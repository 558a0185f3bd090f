"""The run folder's disk against what a run has yet to write: checkpoint sizes counted from the
training state, and the warning after the first optimizer step."""

import json

import numpy as np
import pytest
import torch

from acestep.files import folder_bytes
from acestep.gpu.estimate import estimate_vram
from acestep.models.config import read_dit_config
from acestep.training import checkpoint as ckpt
from acestep.training import disk_space, loop
from acestep.training.disk_space import CheckpointSizes, bytes_to_come, disk_warning, tensor_bytes
from acestep.training.loop import train

from .test_loop import events, make_config


def test_tensor_bytes_counts_every_tensor_and_array_however_nested():
    state = {"a": torch.zeros(10, dtype=torch.float32), "b": [torch.zeros(3, dtype=torch.bfloat16),
                                                             (np.zeros(4, dtype=np.uint32), 7, "text")],
             "c": {"d": torch.zeros(2, 2, dtype=torch.uint8), "e": None}}
    assert tensor_bytes(state) == 40 + 6 + 16 + 4


def test_what_is_to_come_counts_the_checkpoints_and_adapters_not_written_yet(tmp_path):
    sizes = CheckpointSizes(checkpoint=1000, adapter=100)
    # a new run: keep + 1 checkpoints at once, best/ and final/, and one of them while it is replaced
    assert bytes_to_come(tmp_path, sizes, keep=3) == 4 * 1000 + 3 * 100
    for step in (10, 20):  # a resumed run already holds two checkpoints and best/
        ckpt.write_checkpoint(tmp_path, step, {"epoch": 0}, lambda folder: folder.mkdir())
    (tmp_path / "best").mkdir()
    assert bytes_to_come(tmp_path, sizes, keep=3) == 2 * 1000 + 2 * 100


def test_the_warning_says_what_is_short_and_what_to_do(tmp_path, monkeypatch):
    sizes = CheckpointSizes(checkpoint=300 * 2**20, adapter=100 * 2**20)  # 4 x 300 + 3 x 100 MiB = 1.5 GiB
    monkeypatch.setattr(disk_space, "free_space", lambda path: 1500 * 2**20)
    assert disk_warning(tmp_path, sizes, keep=3) is None
    monkeypatch.setattr(disk_space, "free_space", lambda path: 1000 * 2**20)
    message = disk_warning(tmp_path, sizes, keep=3)
    assert f"the disk of {tmp_path} has 1000.0 MiB free" in message
    assert "write up to 1.5 GiB more: 4 checkpoints of 300.0 MiB at once" in message
    assert "best/ and final/ of 100.0 MiB each" in message
    assert "free 500.0 MiB or more, lower run.keep_checkpoints (now 3) or start the run again with " \
           "run.output_dir on another disk" in message
    monkeypatch.setattr(disk_space, "free_space", lambda path: 800 * 2**20)
    assert "lower run.keep_checkpoints" not in disk_warning(tmp_path, sizes, keep=1)  # 2 x 300 + 3 x 100 MiB


@pytest.mark.parametrize("optimizer", ["adamw:0.001", "prodigy:1"])
def test_a_run_warns_after_its_first_step_with_the_size_its_checkpoints_have_on_disk(
        tmp_path, tensors_17, tiny_dit, monkeypatch, optimizer):
    counted = []

    def short_disk(run_dir, sizes, keep):
        counted.append(sizes)
        monkeypatch.setattr(disk_space, "free_space", lambda path: sizes.checkpoint)
        return disk_warning(run_dir, sizes, keep)

    monkeypatch.setattr(loop, "disk_warning", short_disk)
    config = make_config(tmp_path, tensors_17, tiny_dit, "adapter.rank=64", "adapter.alpha=64",
                         f"optimizer.name={optimizer.split(':')[0]}", f"optimizer.lr={optimizer.split(':')[1]}",
                         "run.keep_checkpoints=2", "run.save_every_epochs=1")
    result = train(config)
    [sizes] = counted  # checked once, after the first optimizer step
    warnings = [e for e in events(result.run_dir) if e["type"] == "warning"]
    assert len(warnings) == 1 and warnings[0]["step"] == 1
    assert "more: 3 checkpoints of" in warnings[0]["message"] and "lower run.keep_checkpoints (now 2)" \
        in warnings[0]["message"]
    # the count is the tensors of what a checkpoint holds; on disk come the JSON and the file headers
    [checkpoint] = ckpt.complete_checkpoints(result.run_dir)[-1:]
    on_disk = folder_bytes(checkpoint)
    assert sizes.checkpoint <= on_disk < sizes.checkpoint + 64 * 1024, (sizes, on_disk)
    assert sizes.adapter <= folder_bytes(result.run_dir / "final") < sizes.adapter + 16 * 1024
    assert json.loads((checkpoint / "state.json").read_text())  # a real checkpoint, not a stand-in
    # the estimate before a run counts the same from the model's shapes (less the RNG states: 8 KB)
    estimated = estimate_vram(config, read_dit_config(tiny_dit)).checkpoint_sizes
    assert estimated.adapter == sizes.adapter
    assert 0 <= sizes.checkpoint - estimated.checkpoint < 16 * 1024, (estimated, sizes)


def test_a_run_on_a_disk_with_room_does_not_warn(tmp_path, tensors_17, tiny_dit):
    result = train(make_config(tmp_path, tensors_17, tiny_dit, "run.epochs=1"))
    assert not [e for e in events(result.run_dir) if e["type"] == "warning"]
