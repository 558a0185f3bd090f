"""`acestep-trainer runs`: the runs of a folder as the Runs tab lists them, from their folders alone."""

import json
import os
import signal
import subprocess
import sys

import pytest
from training.conftest import write_tensors_dir
from training.test_loop import make_config, train_stopped_after

from acestep.cli import main
from acestep.files import folder_bytes, size_text
from acestep.training.config import save_config
from acestep.training.loop import train


def test_runs_lists_each_run_with_its_status_losses_and_adapters(tmp_path, tiny_checkpoints, capsys):
    dit = tiny_checkpoints / "acestep-v15-turbo"
    tensors = write_tensors_dir(tmp_path / "tensors", dit, 3)
    done = train(make_config(tmp_path, tensors, dit, "run.name=done", "run.epochs=1", "run.save_every_epochs=1",
                             "run.preview_every_epochs=1", "run.preview_caption=mystyle", "run.preview_seconds=0.4"))
    stopped = train_stopped_after(make_config(tmp_path, tensors, dit, "run.name=stopped", "run.epochs=2"), 2)
    assert (done.status, stopped.status) == ("completed", "stopped")

    runs = tmp_path / "runs"
    assert main(["runs", str(runs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["Run", "Status", "Started", "Steps", "Epochs", "Final", "loss", "Best", "loss",
                                "Adapter", "Last", "preview", "Disk", "Adapters"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {"done", "stopped"}
    assert rows["done"].split()[1] == "done" and rows["done"].endswith("final, best, checkpoints/step-000003")
    assert "lora r4" in rows["done"] and "(epoch average)" in rows["done"]
    assert rows["stopped"].split()[1] == "stopped" and rows["stopped"].endswith("checkpoints/step-000002")

    assert main(["runs", str(runs), "--json"]) == 0
    listed = {run["name"]: run for run in json.loads(capsys.readouterr().out)}
    assert (listed["done"]["step"], listed["stopped"]["step"]) == (3, 2)
    assert listed["done"]["final_loss"] > 0 and listed["done"]["path"] == str(runs / "done")
    assert listed["done"]["disk_bytes"] == folder_bytes(runs / "done")  # what --delete-checkpoints would free, and more
    assert f"  {size_text(folder_bytes(runs / 'done'))}  final, best" in rows["done"]
    # the preview at the end of the epoch: the adapter effect and the distance to the songs at strength 1
    preview = next(json.loads(line) for line in (runs / "done" / "events.jsonl").read_text().splitlines()
                   if json.loads(line)["type"] == "preview")
    assert listed["done"]["preview_step"] == 3 and listed["done"]["preview_effect_db"] == preview["effect_db"]["1"]
    closer = 1 - preview["songs_distance"]["1"] / preview["songs_distance"]["0"]
    assert listed["done"]["preview_closer"] == closer and listed["stopped"]["preview_step"] is None
    assert f"{preview['effect_db']['1']:.2f} dB, {abs(closer):.0%} {'closer' if closer >= 0 else 'farther'}" in \
        rows["done"]

    assert main(["runs", str(tmp_path / "tensors")]) == 1
    assert "No training runs in" in capsys.readouterr().err


def test_runs_takes_one_deletion_at_a_time(tmp_path, tiny_checkpoints, capsys):
    """--delete-checkpoints A --delete B deleted A's checkpoints and said nothing of B."""
    dit = tiny_checkpoints / "acestep-v15-turbo"
    tensors = write_tensors_dir(tmp_path / "tensors", dit, 2)
    for name in ("one", "two"):
        train(make_config(tmp_path, tensors, dit, f"run.name={name}", "run.epochs=1"))
    runs = tmp_path / "runs"
    before = {name: sorted(p.name for p in (runs / name).iterdir()) for name in ("one", "two")}
    with pytest.raises(SystemExit) as exit_:
        main(["runs", str(runs), "--delete-checkpoints", "one", "--delete", "two"])
    assert exit_.value.code == 2
    assert "argument --delete: not allowed with argument --delete-checkpoints" in capsys.readouterr().err
    assert {name: sorted(p.name for p in (runs / name).iterdir()) for name in ("one", "two")} == before
    assert (runs / "one" / "checkpoints").is_dir()
    assert main(["runs", str(runs), "--delete", "two"]) == 0  # each alone still works
    assert not (runs / "two").exists() and (runs / "one" / "checkpoints").is_dir()


def merge_setup(tmp_path, tiny_checkpoints):
    from export.test_formats import trained_adapter

    base = tiny_checkpoints / "acestep-v15-turbo"
    return base, trained_adapter(base, tmp_path / "final")


@pytest.mark.parametrize("options, message", [
    (["--strength", "nan"], "error: --strength must be a finite number (1 = as trained, e.g. 0.8); got nan."),
    (["--strength=-inf"], "error: --strength must be a finite number (1 = as trained, e.g. 0.8); got -inf."),
    (["--max-shard-gb", "-1"], "error: --max-shard-gb must be a size in GB above 0 (e.g. 4), or left out for one "
                               "file; got -1."),
    (["--max-shard-gb", "0"], "error: --max-shard-gb must be a size in GB above 0 (e.g. 4), or left out for one "
                              "file; got 0."),
    (["--max-shard-gb", "nan"], "error: --max-shard-gb must be a size in GB above 0 (e.g. 4), or left out for one "
                                "file; got nan.")])
def test_merge_refuses_a_strength_or_shard_size_it_cannot_use(tmp_path, tiny_checkpoints, capsys, options, message):
    """Before: NaN weights and `"strength": NaN` in merge_info.json, one shard per tensor, 0 ignored."""
    _, adapter = merge_setup(tmp_path, tiny_checkpoints)
    assert main(["merge", str(adapter), "--out", str(tmp_path / "merged"), "--shared", "skip", *options]) == 1
    assert capsys.readouterr().err.strip() == message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_merge_shards_of_a_tiny_size_and_an_adapter_that_does_not_fit(tmp_path, tiny_checkpoints, capsys):
    from safetensors.torch import load_file, save_file

    base, adapter = merge_setup(tmp_path, tiny_checkpoints)
    assert main(["merge", str(adapter), "--out", str(tmp_path / "sharded"), "--shared", "skip",
                 "--max-shard-gb", "0.0004"]) == 0  # 429,497 bytes
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert all(path.stat().st_size <= 429_497 + 64 * 1024 for path in (tmp_path / "sharded").glob("model-*"))
    state = load_file(adapter / "adapter_model.safetensors")
    key = next(k for k in state if "lora_A" in k)
    state[key] = state[key][:, :-1].contiguous()
    save_file(state, adapter / "adapter_model.safetensors")
    assert main(["merge", str(adapter), "--out", str(tmp_path / "bad"), "--shared", "skip"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {adapter / 'adapter_model.safetensors'} does not fit the model: module ")
    assert "[4, 63]" in err and "it was trained for another model" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()


def test_export_help_says_the_default_formats_of_each_adapter_kind(capsys):
    from acestep.export.formats import DEFAULT_FORMATS

    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert (f"default: {' and '.join(DEFAULT_FORMATS['lora'])} for a LoRA, {' and '.join(DEFAULT_FORMATS['dora'])} "
            f"for a DoRA") in text and f"{' and '.join(DEFAULT_FORMATS['lokr'])} for a LoKr" in text


def train_with_ctrl_c(tmp_path, tiny_checkpoints, monkeypatch, *, again_on: str | None):
    """`acestep-trainer train` in this process, with Ctrl+C at step 2 and, when `again_on` names an
    event of the stop (the checkpoint it saves), once more there. Returns (exit status, the run
    folder)."""
    from acestep.training import events

    dit = tiny_checkpoints / "acestep-v15-turbo"
    tensors = write_tensors_dir(tmp_path / "tensors", dit, 4)
    config = save_config(make_config(tmp_path, tensors, dit, "run.name=ctrl-c", "run.epochs=2"), tmp_path / "run.toml")
    console = events.console_listener

    def ctrl_c(event):
        console(event)
        if (event["type"] == "log" and event["step"] == 2) or event["type"] == again_on:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(events, "console_listener", ctrl_c)
    return main(["train", "--config", str(config)]), tmp_path / "runs" / "ctrl-c"


def test_ctrl_c_saves_and_stops_and_then_means_what_it_meant_before(tmp_path, tiny_checkpoints, monkeypatch, capsys):
    """The handlers stayed installed after the run: a Ctrl+C while the process exits raised
    KeyboardInterrupt from them in an exit callback (a traceback after `stopped:`)."""
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    status, run = train_with_ctrl_c(tmp_path, tiny_checkpoints, monkeypatch, again_on=None)
    out, err = capsys.readouterr()
    assert status == 130 and f"stopped: step 2, epoch 0; run folder {run}" in out
    assert "Stopping after the current step and saving a checkpoint (Ctrl+C again to abort at once)" in err
    assert (run / "checkpoints" / "step-000002" / "COMPLETE").is_file()
    assert {signum: signal.getsignal(signum) for signum in handlers} == handlers


def test_a_second_ctrl_c_while_the_stop_is_saved_aborts_at_once(tmp_path, tiny_checkpoints, monkeypatch, capsys):
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    status, run = train_with_ctrl_c(tmp_path, tiny_checkpoints, monkeypatch, again_on="checkpoint")
    out, err = capsys.readouterr()
    assert status == 130 and err.rstrip().endswith("interrupted") and "stopped:" not in out
    assert (run / "checkpoints" / "step-000002" / "COMPLETE").is_file()  # saved before the second one came
    assert {signum: signal.getsignal(signum) for signum in handlers} == handlers


CTRL_C_WHILE_EXITING = """
import atexit, os, signal, sys, time

signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a background job ignores it)


def ctrl_c_while_exiting():  # registered first, so it runs last: a late Ctrl+C during torch's clean-up
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(1)
    print("still exiting", flush=True)


atexit.register(ctrl_c_while_exiting)
from acestep.training import events

console = events.console_listener


def ctrl_c(event):
    console(event)
    if event["type"] == "log" and event["step"] == 2:
        os.kill(os.getpid(), signal.SIGINT)


events.console_listener = ctrl_c
from acestep.cli import main

sys.exit(main(["train", "--config", sys.argv[1]]))
"""


def test_a_ctrl_c_while_a_stopped_run_exits_ends_it_without_a_traceback(tmp_path, tiny_checkpoints):
    """The QA case: Ctrl+C, the stop saved, `stopped:` printed, Ctrl+C again while the process
    exits: it ends at once (killed by SIGINT: status 130 in a shell), no traceback."""
    dit = tiny_checkpoints / "acestep-v15-turbo"
    tensors = write_tensors_dir(tmp_path / "tensors", dit, 4)
    config = save_config(make_config(tmp_path, tensors, dit, "run.name=ctrl-c", "run.epochs=2"), tmp_path / "run.toml")
    done = subprocess.run([sys.executable, "-c", CTRL_C_WHILE_EXITING, str(config)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert "stopped: step 2" in done.stdout and "still exiting" not in done.stdout
    assert done.returncode == -signal.SIGINT, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr
