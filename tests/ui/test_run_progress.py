"""A run's progress as the Train tab shows it (`acestep/ui/run_progress.py`): the progress line,
the plot data after a resume, and the newest previews."""

import json

from acestep.training.run_folders import read_events
from acestep.training.run_layout import EVENTS_FILE
from acestep.ui.run_progress import plot_frames, preview_files, progress_markdown


def test_progress_gives_step_of_total_rate_and_eta():
    events = [{"type": "start", "time": 90.0, "step": 0, "epoch": 0, "message": "run x; ... 100 steps in all"},
              {"type": "log", "time": 100.0, "step": 10, "epoch": 0, "loss": 0.5, "lr": 1e-4},
              {"type": "log", "time": 120.0, "step": 20, "epoch": 1, "loss": 0.25, "lr": 1e-4}]
    assert progress_markdown(events, now=125.0) == (
        "**Step 20 of 100 (20 %)** · epoch 2 · loss 0.2500 · 2.00 s/step · ETA 2 min 35 s")
    one_log = events[:2]  # the speed from the start event until the second log arrives
    assert progress_markdown(one_log, now=100.0) == (
        "**Step 10 of 100 (10 %)** · epoch 1 · loss 0.5000 · 1.00 s/step · ETA 1 min 30 s")
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
