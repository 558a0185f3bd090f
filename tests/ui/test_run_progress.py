"""A run's progress as the Train tab shows it (`acestep/ui/run_progress.py`): the progress line
(its epoch as the command counts it, on the events of a real run), the plot data after a resume,
and the newest previews."""

import json

import pytest

from acestep.training.run_folders import read_events
from acestep.training.run_layout import EVENTS_FILE
from acestep.ui.run_progress import epochs_finished, plot_frames, preview_files, progress_markdown


def test_progress_gives_step_of_total_rate_and_eta():
    events = [{"type": "start", "time": 90.0, "step": 0, "epoch": 0, "message": "run x; ... 100 steps in all"},
              {"type": "log", "time": 100.0, "step": 10, "epoch": 0, "loss": 0.5, "lr": 1e-4},
              {"type": "log", "time": 120.0, "step": 20, "epoch": 1, "loss": 0.25, "lr": 1e-4}]
    assert progress_markdown(events, now=125.0) == (
        "**Step 20 of 100 (20 %)** · epoch 1 · loss 0.2500 · 2.00 s/step · ETA 2 min 35 s")
    one_log = events[:2]  # the speed from the start event until the second log arrives
    assert progress_markdown(one_log, now=100.0) == (
        "**Step 10 of 100 (10 %)** · epoch 0 · loss 0.5000 · 1.00 s/step · ETA 1 min 30 s")
    done = events + [{"type": "done", "time": 130.0, "step": 20, "epoch": 1, "message": "finished: adapter in x"}]
    assert progress_markdown(done).endswith(" · finished: adapter in x · hear its adapters on the **Listen** tab")
    failed = events + [{"type": "error", "time": 130.0, "step": 20, "epoch": 1, "message": "out of memory"}]
    assert progress_markdown(failed).endswith(" · failed: out of memory")
    assert progress_markdown([]) == "No events yet."
    warned = events[:1] + [{"type": "warning", "time": 91.0, "step": 0, "epoch": 0, "message": "LoKr trains without "
                            "dropout"}] + events[1:]
    assert progress_markdown(warned, now=125.0) == progress_markdown(events, now=125.0) + (
        "\n\n⚠ step 0: LoKr trains without dropout")
    before_restart = [{"type": "warning", "step": 3, "message": "old"}] + events
    # only the warnings since the last start
    assert progress_markdown(before_restart, now=125.0) == progress_markdown(events, now=125.0)


def test_the_epoch_is_the_epochs_finished_whichever_event_says_it():
    # An epoch's end as the loop writes it (4 steps an epoch, the 760th epoch ending at step 3040):
    # its last log is still in epoch 759 counted from 0; the `epoch`, `validation` and `best` events
    # name the epoch that ended (759); the checkpoint after them, and a stop, count the epochs
    # finished (760); a preview at an epoch's end names the one that ended, one after a step does not.
    boundary = [{"type": "log", "step": 3040, "epoch": 759, "loss": 0.5},
                {"type": "epoch", "step": 3040, "epoch": 759, "loss": 0.5},
                {"type": "validation", "step": 3040, "epoch": 759, "val_loss": 0.6},
                {"type": "best", "step": 3040, "epoch": 759, "loss": 0.55},
                {"type": "checkpoint", "step": 3040, "epoch": 760, "message": "end of epoch 759"},
                {"type": "preview", "step": 3040, "epoch": 759, "files": []},
                {"type": "warning", "step": 3040, "epoch": 759, "message": "the preview failed"},
                {"type": "stop", "step": 3040, "epoch": 760, "message": "stopped on request at step 3040"}]
    assert [epochs_finished(boundary[:end]) for end in range(1, len(boundary) + 1)] == [
        759, 760, 760, 760, 760, 760, 760, 760]
    assert epochs_finished(boundary[5:7]) is None and epochs_finished([]) is None
    assert epochs_finished([{"type": "log", "step": 1, "epoch": True}]) is None  # not a number
    assert "**Step 3040** · epoch 760 · loss 0.5000 · stopped on request at step 3040" in progress_markdown(boundary)


@pytest.mark.slow
@pytest.mark.parametrize(("stop_on", "step", "epoch"), [
    ("log", 4, 1),  # the last step of the 2nd epoch: stopped before its end is counted
    ("epoch", 4, 2),  # at the 2nd epoch's end, once counted
])
def test_the_progress_line_and_the_command_name_the_same_epoch(tmp_path, tiny_checkpoints, stop_on, step, epoch):
    """A real run (2 songs, 2 steps an epoch) stopped at the 2nd epoch's end, before or after the
    loop counts it: the progress line's step and epoch are those of the command's last line
    ("stopped: step 4, epoch 1", or "epoch 2"), and before the stop, those of a stop there."""
    from acestep.training.config import TrainingConfig, apply_overrides
    from acestep.training.loop import train
    from training.conftest import write_tensors_dir

    dit = tiny_checkpoints / "acestep-v15-turbo"
    config = apply_overrides(TrainingConfig(), [
        f"data.tensors_dir={write_tensors_dir(tmp_path / 'tensors', dit, 2)}", f"model.checkpoint={dit}",
        f"run.output_dir={tmp_path / 'runs'}", "run.name=run", "adapter.rank=4", "adapter.alpha=8",
        "optimizer.warmup_steps=0", "run.epochs=3", "run.log_every_steps=1", "data.max_seconds=1.2"])
    requests = []

    def stop_at_the_second_epoch_s_end(event):
        if event["type"] == stop_on and event["step"] == 4:
            requests[0]()

    result = train(config, listeners=[stop_at_the_second_epoch_s_end], stop_signal=requests.append)
    assert (result.status, result.step, result.epoch) == ("stopped", step, epoch)
    events = read_events(result.run_dir / EVENTS_FILE)
    assert events[-1]["type"] == "stop"
    assert progress_markdown(events).startswith(f"**Step {result.step} of 6 (67 %)** · epoch {result.epoch} · ")
    # meanwhile: the epoch the command would have printed had it stopped at that event
    for end, event in enumerate(events, 1):
        if event["type"] in ("log", "checkpoint", "stop"):  # where a stop saves, it says the loop's count
            assert epochs_finished(events[:end]) == event["epoch"], event
        elif event["type"] == "epoch":  # the end of an epoch, counted at once
            assert epochs_finished(events[:end]) == event["epoch"] + 1, event


def test_plot_data_keeps_the_last_value_of_a_step_logged_again_after_a_resume(tmp_path):
    lines = [{"type": "log", "step": 1, "loss": 0.9, "lr": 0.1, "grad_norm": 2.0},
             {"type": "log", "step": 2, "loss": 0.8, "lr": 0.2, "grad_norm": 1.5},
             {"type": "validation", "step": 2, "val_loss": 0.7}, {"type": "start", "step": 1},
             {"type": "log", "step": 2, "loss": 0.6, "lr": 0.2, "grad_norm": 1.25},
             {"type": "log", "step": 3, "loss": 0.5, "lr": 0.3}]  # a run from before the norms were logged
    (tmp_path / "events.jsonl").write_text("\n".join(map(json.dumps, lines)) + '\n{"type": "log", "st')
    frames = plot_frames(read_events(tmp_path / EVENTS_FILE))
    assert frames["loss"].values.tolist() == [[1, 0.9], [2, 0.6], [3, 0.5]]
    assert frames["val_loss"].values.tolist() == [[2, 0.7]] and frames["lr"]["lr"].tolist() == [0.1, 0.2, 0.3]
    assert frames["grad_norm"].values.tolist() == [[1, 2.0], [2, 1.25]]


def test_previews_are_the_newest_steps_wavs_by_strength(tmp_path):
    assert preview_files(tmp_path)[1] == []
    for step, strengths in ((10, ("0", "1")), (200, ("1", "0.5", "0"))):
        folder = tmp_path / "previews" / f"step-{step:06d}"
        folder.mkdir(parents=True)
        for strength in strengths:
            (folder / f"strength-{strength}.wav").write_bytes(b"RIFF")
            (folder / f"strength-{strength}.png").write_bytes(b"PNG")
    label, files = preview_files(tmp_path)
    assert label == "Previews at step 200"
    record = tmp_path / "previews" / "step-000200" / "preview.json"
    record.write_text(json.dumps({"step": 200, "effect_db": {"0.5": 1.204, "1": 3.456}}))
    assert preview_files(tmp_path)[0] == ("Previews at step 200 · adapter effect strength 0.5: 1.20 dB, "
                                          "strength 1: 3.46 dB from the base model")
    record.write_text(json.dumps({"step": 200, "effect_db": {"1": 3.456}, "songs_distance": {"0": 1.2, "1": 0.9}}))
    assert preview_files(tmp_path)[0] == ("Previews at step 200 · adapter effect strength 1: 3.46 dB from the base "
                                          "model · latent distance to the songs strength 0: 1.200, "
                                          "strength 1: 0.900 (25% closer than the base model)")
    record.write_text('{"effect_db": {"1": "loud"}}')  # a record the heading cannot use is left out
    assert preview_files(tmp_path)[0] == "Previews at step 200"
    assert [(name, path.name) for name, path in files] == [
        ("strength 0", "strength-0.wav"), ("strength 0.5", "strength-0.5.wav"), ("strength 1", "strength-1.wav")]
