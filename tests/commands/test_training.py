"""`acestep-trainer runs`: the runs of a folder as the Runs tab lists them, from their folders alone."""

import json

from training.conftest import write_tensors_dir
from training.test_loop import make_config, train_stopped_after

from acestep.cli import main
from acestep.files import folder_bytes, size_text
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
