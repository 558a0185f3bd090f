"""The Train tab: the generated form against the config schema, presets, the VRAM estimate, the
path and value checks before a start, a real train job on the tiny model whose events become
plot data, stop and resume, progress and ETA, and previews."""

import os
import re
import subprocess
import sys
from pathlib import Path

import gradio as gr
import pytest

from acestep.errors import AceStepError, ConfigError, JobError
from acestep.gpu import GpuStatus, SystemGpuReport
from acestep.training.config import TrainingConfig, apply_overrides, describe_fields, load_config, save_config
from acestep.training.run_folders import EVENTS_FILE, read_events
from acestep.training.run_lock import RunLock
from acestep.ui.context import AppContext, PathRefused, Workspace
from acestep.ui.run_progress import progress_markdown
from acestep.ui.train_form import (
    FORM_FIELDS, apply_preset_to_values, config_from_values, initial_config, suggested_preset, values_from_config,
)
from acestep.ui.train_estimate import VramEstimator, estimate_text, plan_text
from acestep.ui.train_tab import (
    NO_VALIDATION_TITLE, VALIDATION_TITLE, build_train_tab,
    resume_training, run_snapshot, start_training, stop_training, training_status, validation_title,
)
from support import wait_for

GIB = 2**30


def gpu_report(*gpus: tuple[float, float]) -> SystemGpuReport:
    """A report of GPUs given as (total GiB, free GiB), compute capability 8.6."""
    statuses = tuple(GpuStatus(i, f"GPU{i}", int(total * GIB), int((total - free) * GIB), int(free * GIB), 0, 40,
                               "ok", (), (), (8, 6)) for i, (total, free) in enumerate(gpus))
    return SystemGpuReport(statuses, "550", "12.4", "" if gpus else "no NVIDIA GPU (test)", "cpu", 2, None, None)


@pytest.fixture
def ctx(tmp_path) -> AppContext:
    return AppContext.create(Workspace(tmp_path / "ws", tmp_path / "checkpoints"))


def form_values(*overrides: str) -> list:
    return values_from_config(apply_overrides(TrainingConfig(), ["data.tensors_dir=tensors/x", *overrides]))


def with_input(values: list, path: str, value) -> list:
    """`values` with the input of field `path` holding `value` (as a user typed it)."""
    values = list(values)
    values[[field.path for field in FORM_FIELDS].index(path)] = value
    return values


# ---- the form --------------------------------------------------------------------------------------
def test_every_config_field_has_an_input_whose_info_is_the_schema_help():
    docs = describe_fields()
    assert [field.path for field in FORM_FIELDS] == [doc.path for doc in docs]
    for field, doc in zip(FORM_FIELDS, docs, strict=True):
        assert field.info.startswith(doc.help)
        assert doc.path in field.label


def test_form_values_round_trip_to_the_same_config():
    config = apply_overrides(TrainingConfig(), [
        "data.tensors_dir=tensors/band", "model.checkpoints_dir=/models", "optimizer.betas=[0.8, 0.95]",
        "adapter.modules=q_proj,v_proj", "run.devices=\"1\"", "data.max_seconds=none", "objective.min_snr_gamma=5",
        "run.preview_strengths=0,0.5,1", "optimizer.grad_clip=none", "adapter.type=lokr", "run.max_steps=500",
        "run.name=night-run", "optimizer.lr=3e-5", "run.gradient_checkpointing=true"])
    values = values_from_config(config)
    by_path = dict(zip((field.path for field in FORM_FIELDS), values, strict=True))
    assert by_path["optimizer.betas"] == "0.8, 0.95" and by_path["run.devices"] == '"1"'
    assert by_path["data.max_seconds"] is None and by_path["model.checkpoints_dir"] == "/models"
    assert config_from_values(values) == config
    # as typed, and as Gradio sends numbers
    by_path.update({"run.devices": "0,1", "data.batch_size": 3.0, "model.checkpoints_dir": ""})
    changed = config_from_values(list(by_path.values()))
    assert (changed.run.devices, changed.data.batch_size, changed.model.checkpoints_dir) == ("0,1", 3, None)


def test_a_bad_value_gives_a_message_naming_the_field():
    with pytest.raises(ConfigError, match=r"Train tab: data\.batch_size must be at least 1, found 0"):
        config_from_values(with_input(form_values(), "data.batch_size", 0))
    values = with_input(with_input(form_values(), "optimizer.betas", "0.9, fast"), "adapter.rank", None)
    with pytest.raises(ConfigError) as error:
        config_from_values(values)
    assert "optimizer.betas must be a list of numbers, found '0.9, fast'" in str(error.value)
    assert "adapter.rank must be a whole number, found none" in str(error.value)
    with pytest.raises(ConfigError, match=r"data\.tensors_dir is required"):
        config_from_values(values_from_config(TrainingConfig()))


def test_the_preset_is_suggested_by_gpu_memory_and_applied_to_the_form(ctx):
    assert suggested_preset(gpu_report()) == "quick_test"
    assert suggested_preset(gpu_report((8, 7.5), (23.6, 20))) == "vram_24gb_plus"
    assert suggested_preset(gpu_report((11.7, 11))) == "vram_12gb"
    first = initial_config(ctx, "quick_test")
    assert (first.adapter.rank, first.run.epochs, first.run.output_dir, first.model.checkpoints_dir) == (
        16, 10, "runs", str(ctx.workspace.checkpoints))
    demo = AppContext(ctx.workspace, ctx.jobs, demo=True, defaults={
        "tensors": ctx.workspace.tensors / "demo", "checkpoint": "acestep-v15-base", "run_name": "demo"})
    first = initial_config(demo, "vram_12gb")
    assert (first.data.tensors_dir, first.model.checkpoint, first.run.name, first.optimizer.name) == (
        "tensors/demo", "acestep-v15-base", "demo", "adamw8bit")
    values = form_values("run.name=mine", "run.seed=7", "adapter.rank=64")
    config = config_from_values(apply_preset_to_values(values, "vram_8gb"))
    assert (config.adapter.rank, config.adapter.targets, config.optimizer.name, config.data.max_seconds) == (
        16, "self_attention", "adafactor", 40.0)
    assert config.run.gradient_checkpointing is True
    assert (config.data.tensors_dir, config.run.name, config.run.seed) == ("tensors/x", "mine", 7)  # left alone


def test_the_estimate_grows_with_the_batch_and_says_whether_it_fits(ctx):
    estimator = VramEstimator()
    report = gpu_report((12, 10))
    try:
        small = estimate_text(ctx, config_from_values(form_values("data.batch_size=1")), report, estimator)
        large = estimate_text(ctx, config_from_values(form_values("data.batch_size=3")), report, estimator)
    finally:
        estimator.close()

    def total(text):
        return float(re.search(r"Estimated peak VRAM: ([\d.]+) GiB", text).group(1))

    assert 6 < total(small) < 10 < total(large)
    assert "GPU 0 GPU0: fits: 10.00 GiB free" in small and "batch 1 x 60 s" in small
    assert "GPU 0 GPU0: **does not fit now**: 10.00 GiB free" in large and "batch 3 x 60 s" in large
    fits = re.findall(r"`([\w.]+=[\w.]+)` \(about ([\d.]+) GiB\)", large.split("these settings would fit: ")[1])
    assert fits[0] == ("run.gradient_checkpointing=true", fits[0][1]) and all(float(t) <= 10 for _, t in fits)
    assert "`acestep-v15-turbo` is not on disk" in small  # no checkpoints here: the 2B DiT's shapes
    # and the disk the run's checkpoints take: the same for both batches (the adapter and the optimizer's state)
    disk = re.search(r"Disk: a checkpoint is about ([\d.]+) MiB; the run writes up to ([\d.]+) GiB \(4 checkpoints "
                     rf"at once, best/ and final/\) into {re.escape(str(ctx.workspace.runs))}\S*, whose disk has "
                     r"[\d.]+ GiB free\.", small)
    assert disk.group(0) in large
    assert float(disk.group(1)) == 504.0  # rank 64 on attention: 168 MiB of fp32 adapter, AdamW's two moments


def test_the_run_plan_counts_the_chosen_tensors_folders_songs_on_the_gpus_the_run_takes(ctx, tmp_path):
    from acestep.preprocess.manifest import Manifest, ManifestSample, write_manifest

    config = config_from_values(form_values("data.batch_size=1", "optimizer.gradient_accumulation=4",
                                            "run.epochs=800", "run.devices=auto"))
    assert plan_text(ctx, config, gpu_report()) == ""  # no manifest yet: Start says what is missing
    samples = [ManifestSample(f"s{i}", f"s{i}.wav", f"s{i}.safetensors", 1000, 40.0, "h", "k") for i in range(20)]
    write_manifest(ctx.workspace.root / "tensors" / "x", Manifest(model={}, settings={}, samples=samples))
    one = plan_text(ctx, config, gpu_report((24, 20)))
    assert one.startswith("**Run plan.** 20 song(s) train, none held out for validation. Per epoch: 20 batch(es) of "
                          "1, 5 optimizer step(s); effective batch 4 (1 x 4 accumulation). 4,000 optimizer steps")
    assert "Crops" not in one and "\n- " not in one  # 40 s songs, 60 s crops; the usual number of steps
    two = plan_text(ctx, config, gpu_report((24, 20), (24, 20)))  # devices=auto takes both GPUs
    assert "10 batch(es) of 1 per process, 3 optimizer step(s); effective batch 8 (1 x 4 accumulation x 2" in two
    assert "2,400 optimizer steps in all (800 epochs)" in two
    repeated = config_from_values(with_input(form_values("run.epochs=800"), "data.repeats", 3.0))  # as Gradio sends it
    assert repeated.data.repeats == 3
    assert "Per epoch: each song 3 times (data.repeats), 60 batch(es) of 1" in plan_text(ctx, repeated, gpu_report())
    outside = config_from_values(form_values(f"data.tensors_dir={tmp_path}"))
    assert plan_text(ctx, outside, gpu_report()).startswith("**Run plan**: The tensors folder (data.tensors_dir)")


def test_an_estimate_helper_that_dies_gives_its_error_and_is_started_again(ctx):
    script = "import sys; sys.stdin.readline(); sys.stderr.write('ImportError: no diffusers\\n'); sys.exit(3)"
    estimator = VramEstimator(script=script)
    config = config_from_values(form_values())
    for _ in range(2):  # the second call starts a new helper
        with pytest.raises(AceStepError, match=r"helper process ended or hung \(its last error: ImportError: no "
                                               r"diffusers\); it is started again"):
            estimator.estimate(config, None, [(None, None)])
    replying = VramEstimator(script="import sys\nfor line in sys.stdin: print('{\"error\": \"bad\"}', flush=True)")
    try:
        with pytest.raises(AceStepError, match="The VRAM estimate failed: bad"):
            replying.estimate(config, None, [(None, None)])
    finally:
        replying.close()


# ---- starting: the checks ------------------------------------------------------------------------------
def test_paths_outside_the_workspace_are_refused_and_nothing_is_submitted(ctx, tmp_path):
    for tensors in ("/etc", "../outside", str(tmp_path)):
        with pytest.raises(PathRefused, match="outside the folders this app may use"):
            start_training(ctx, form_values(f"data.tensors_dir={tensors}"))
    (ctx.workspace.tensors / "x").mkdir()
    with pytest.raises(ConfigError, match=r"data\.tensors_dir: .*x holds no manifest\.json"):
        start_training(ctx, form_values())
    (ctx.workspace.tensors / "x" / "manifest.json").write_text("{}")
    with pytest.raises(PathRefused, match="runs folder"):
        start_training(ctx, form_values("run.output_dir=/tmp"))
    (ctx.workspace.runs / "taken").mkdir()
    (ctx.workspace.runs / "taken" / "events.jsonl").write_text("")
    with pytest.raises(ConfigError, match=r"run\.name: .*taken already holds a run"):
        start_training(ctx, form_values("run.name=taken"))
    with pytest.raises(ConfigError, match="is not a run folder"):
        resume_training(ctx, "tensors/x")
    (ctx.workspace.runs / "taken" / "config.toml").write_text("")
    lock = RunLock.acquire(ctx.workspace.runs / "taken")  # trained by a process outside the app's jobs
    try:
        with pytest.raises(JobError, match=rf"Run taken is being trained by process {os.getpid()} on .*, outside "
                                            "this app's jobs"):
            resume_training(ctx, "runs/taken")
    finally:
        lock.release()
    assert ctx.jobs.list_jobs() == []


# ---- a real run ------------------------------------------------------------------------------------------
@pytest.fixture
def train_ctx(tmp_path, tiny_checkpoints) -> AppContext:
    from training.conftest import write_tensors_dir

    ctx = AppContext.create(Workspace(tmp_path / "ws", tiny_checkpoints))
    write_tensors_dir(ctx.workspace.tensors / "demo", tiny_checkpoints / "acestep-v15-turbo", 4)
    return ctx


def tiny_run_values(name: str, *overrides: str) -> list:
    return values_from_config(apply_overrides(TrainingConfig(), [
        "data.tensors_dir=tensors/demo", "model.checkpoint=acestep-v15-turbo", f"run.name={name}",
        "adapter.rank=4", "adapter.alpha=8", "data.max_seconds=1.2", "run.accelerator=cpu", "run.log_every_steps=1",
        "optimizer.warmup_steps=1", *overrides]))



@pytest.mark.slow
def test_start_runs_a_real_train_job_whose_loss_becomes_plot_data(train_ctx):
    ctx = train_ctx
    job = start_training(ctx, tiny_run_values("ui-run", "run.epochs=1"), owner="ann")
    run = ctx.workspace.runs / "ui-run"
    config_file = ctx.workspace.runs / ".configs" / "ui-run.toml"
    assert (job.kind, job.owner, job.label, job.needs_gpu) == ("train", "ann", "ui-run", True)
    assert job.argv[-3:] == ["train", "--config", str(config_file)] and job.events_path == str(run / "events.jsonl")
    saved = load_config(config_file)
    assert saved.data.tensors_dir == str(ctx.workspace.tensors / "demo")
    assert saved.model.checkpoints_dir == str(ctx.workspace.checkpoints) and saved.run.output_dir == str(
        ctx.workspace.runs)
    assert training_status(ctx)[0].id == job.id
    second = start_training(ctx, tiny_run_values("second", "run.epochs=1"), owner="bob")  # waits for the GPU
    assert second.status == "queued"
    assert "Queued next: **second** by bob: queued (waits for GPU 0: train ui-run)" in training_status(ctx)[1]
    with pytest.raises(JobError, match="Run ui-run is already (queued|running)"):
        start_training(ctx, tiny_run_values("ui-run", "run.epochs=1"))
    job = ctx.jobs.wait(job.id, timeout=300)
    assert job.status == "done", ctx.jobs.tail_log(job.id)
    logs = [event for event in read_events(run / EVENTS_FILE) if event["type"] == "log"]
    snapshot = run_snapshot(ctx, "runs/ui-run")
    assert len(logs) == 4  # 4 samples, batch 1, 1 epoch
    assert snapshot.frames["loss"]["step"].tolist() == [event["step"] for event in logs] == [1, 2, 3, 4]
    assert snapshot.frames["loss"]["loss"].tolist() == [event["loss"] for event in logs]
    assert snapshot.frames["lr"]["lr"].tolist() == [event["lr"] for event in logs]
    assert snapshot.frames["grad_norm"]["grad_norm"].tolist() == [event["grad_norm"] for event in logs]
    assert snapshot.frames["val_loss"].empty and validation_title(snapshot.run_dir) == NO_VALIDATION_TITLE
    assert snapshot.progress.startswith("**Step 4 of 4 (100 %)**") and "finished: adapter in" in (
        snapshot.progress)
    assert "[done] completed: step 4, epoch 1" in snapshot.log
    assert ctx.jobs.wait(second.id, timeout=300).status == "done"  # the queue moved on by itself
    assert training_status(ctx)[0] is None


@pytest.mark.slow
def test_stop_then_resume_continues_the_run(train_ctx):
    ctx = train_ctx
    run = ctx.workspace.runs / "long"
    job = start_training(ctx, tiny_run_values("long", "run.epochs=200", "run.save_every_epochs=0"))
    wait_for(lambda: sum(event["type"] == "log" for event in read_events(run / EVENTS_FILE)) >= 2, 300,
             "two logged steps", interval=0.2)
    assert stop_training(ctx) in ("Training long: stopping.", "Training long: stopped.")
    job = ctx.jobs.wait(job.id, timeout=120)
    assert job.status == "stopped", ctx.jobs.tail_log(job.id)
    stopped_at = read_events(run / EVENTS_FILE)[-1]
    assert stopped_at["type"] == "stop"
    assert f"stopped on request at step {stopped_at['step']}" in progress_markdown(read_events(run / EVENTS_FILE))
    resumed = resume_training(ctx, "runs/long", owner="bob")
    assert resumed.argv[-3:] == ["train", "--resume", str(run)] and resumed.owner == "bob"
    wait_for(lambda: any(event["type"] == "log" and event["step"] > stopped_at["step"]
                         for event in read_events(run / EVENTS_FILE)), 300, "a step after the resume", interval=0.2)
    resumed_from = [event for event in read_events(run / EVENTS_FILE) if event["type"] == "start"
                    and event["message"].startswith("resumed from")]
    assert [event["step"] for event in resumed_from] == [stopped_at["step"]]
    steps = run_snapshot(ctx, str(run)).frames["loss"]["step"].tolist()
    assert steps == sorted(set(steps)) and steps[0] == 1 and steps[-1] > stopped_at["step"]  # one curve across both
    stop_training(ctx)
    assert ctx.jobs.wait(resumed.id, timeout=120).status == "stopped"
    assert stop_training(ctx) == "No training job is queued or running."


# ---- the tab ------------------------------------------------------------------------------------------
def test_the_tab_builds_with_its_ids_and_the_ui_process_stays_torch_free(ctx, monkeypatch):
    monkeypatch.setattr("acestep.ui.train_tab.read_gpus", lambda: gpu_report())  # no GPU, wherever it runs
    with gr.Blocks() as app:
        build_train_tab(ctx)
    components = {c["props"].get("elem_id"): c["props"] for c in app.get_config_file()["components"]
                  if c.get("props", {}).get("elem_id")}
    for elem_id in ("train-preset", "train-tensors", "train-run-name", "train-start", "train-stop", "train-resume",
                    "train-loss-plot", "train-estimate", "train-status", "train-log", "train-profile"):
        assert elem_id in components, elem_id
    assert components["train-preset"]["value"] == "quick_test"  # no GPU here
    assert components["train-adapter-rank"]["value"] == 16  # the preset, applied to the form
    lr_help = next(doc.help for doc in describe_fields() if doc.path == "optimizer.lr")
    assert components["train-optimizer-lr"]["info"].startswith(lr_help)
    code = ("import sys, acestep.ui.train_tab, acestep.ui.profiles; "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout
    assert out.strip() == "[]"


def test_the_timer_slows_down_while_no_training_job_runs_or_waits(ctx, monkeypatch):
    from acestep.ui.ticks import IDLE_POLL_SECONDS, POLL_SECONDS

    monkeypatch.setattr("acestep.ui.train_tab.read_gpus", lambda: gpu_report())
    with gr.Blocks() as app:
        build_train_tab(ctx)
    # the tab's own tick: it watches a run (the panel of jobs has a timer of its own)
    [tick] = [fn for fn in app.fns.values() if any(event == "tick" for _, event in fn.targets)
              and any(getattr(block, "elem_id", None) == "train-log" for block in fn.outputs)]

    def pace(updates):  # the timer's update among the tick's outputs (None when skipped), and the pace
        timers = [update for update in updates if isinstance(update, gr.Timer)]
        assert len(timers) <= 1
        return (timers[0].value if timers else None), updates[-1]

    updates = tick.fn("", {}, POLL_SECONDS)
    assert pace(updates) == (IDLE_POLL_SECONDS, IDLE_POLL_SECONDS)
    assert pace(tick.fn("", updates[-3], IDLE_POLL_SECONDS)) == (None, IDLE_POLL_SECONDS)  # already slow
    job = ctx.jobs.submit("train", [sys.executable, "-c", "import time; time.sleep(60)"], needs_gpu=False)
    try:
        updates = tick.fn("", updates[-3], IDLE_POLL_SECONDS)
        assert pace(updates) == (POLL_SECONDS, POLL_SECONDS)  # a training job: every POLL_SECONDS again
        assert "running" in updates[3]  # and the status line says so
        assert pace(tick.fn("", updates[-3], POLL_SECONDS)) == (None, POLL_SECONDS)
    finally:
        ctx.jobs.stop(job.id, force=True)
        assert ctx.jobs.wait(job.id, timeout=60).finished
    assert pace(tick.fn("", updates[-3], POLL_SECONDS)) == (IDLE_POLL_SECONDS, IDLE_POLL_SECONDS)


def test_the_lists_read_again_when_opened_keep_the_chosen_item_in_its_place(ctx, monkeypatch):
    monkeypatch.setattr("acestep.ui.train_tab.read_gpus", lambda: gpu_report())
    for name in ("b-songs", "d-songs"):
        (ctx.workspace.tensors / name).mkdir(parents=True)
        (ctx.workspace.tensors / name / "manifest.json").write_text("{}")
    for name, mtime in (("old-run", 1), ("new-run", 2)):
        (ctx.workspace.runs / name).mkdir(parents=True)
        (ctx.workspace.runs / name / "config.toml").write_text("")
        os.utime(ctx.workspace.runs / name / "config.toml", (mtime, mtime))
    with gr.Blocks() as app:
        build_train_tab(ctx)
    (ctx.workspace.tensors / "a-songs").mkdir()  # preprocessed after the page loaded
    (ctx.workspace.tensors / "a-songs" / "manifest.json").write_text("{}")
    (ctx.workspace.runs / "newest-run").mkdir()  # started after the page loaded
    (ctx.workspace.runs / "newest-run" / "config.toml").write_text("")
    by_id = {getattr(block, "elem_id", None): block for block in app.blocks.values()}

    def handler(elem_id: str, event: str = "focus"):
        return next(fn.fn for fn in app.fns.values() if (by_id[elem_id]._id, event) in fn.targets)

    # Sorted, the new item would take the chosen one's place, which Gradio ticks while the list is
    # open (and Enter picks): new items go at the end.
    shown = ["tensors/b-songs", "tensors/d-songs"]
    assert handler("train-tensors")("tensors/b-songs", shown) == (
        gr.update(choices=[*shown, "tensors/a-songs"]), [*shown, "tensors/a-songs"])
    shown = ["runs/new-run", "runs/old-run"]
    assert handler("train-run")("runs/old-run", shown) == (
        gr.update(choices=[*shown, "runs/newest-run"]), [*shown, "runs/newest-run"])
    assert handler("train-model-checkpoint")("my/own-model", ctx.workspace.dit_names()) == gr.skip()
    # ↻ (the list is closed then): newest first, the chosen run kept, the page's state too
    runs = ["runs/newest-run", "runs/new-run", "runs/old-run"]
    assert handler("train-run-refresh", "click")("runs/old-run") == (gr.update(choices=runs, value="runs/old-run"),
                                                                     runs)
    # the profiles list, (label, path) pairs: the run started since the page loaded goes at the end
    config = str(ctx.workspace.runs / "{}" / "config.toml")
    shown = [("run: new-run", config.format("new-run")), ("run: old-run", config.format("old-run"))]
    newest = ("run: newest-run", config.format("newest-run"))
    assert handler("train-profile")(config.format("old-run"), shown) == (
        gr.update(choices=[*shown, newest]), [*shown, newest])
    assert handler("train-profile")(config.format("old-run"), [newest, *shown]) == gr.skip()  # nothing new


def test_the_validation_plot_says_when_the_run_has_no_validation_split(tmp_path):
    assert validation_title(tmp_path) == VALIDATION_TITLE  # no config yet: nothing to say
    config = apply_overrides(TrainingConfig(), ["data.tensors_dir=tensors/songs"])
    save_config(config, tmp_path / "config.toml")
    assert config.data.validation_split == 0 and validation_title(tmp_path) == NO_VALIDATION_TITLE
    save_config(apply_overrides(config, ["data.validation_split=0.2"]), tmp_path / "config.toml")
    assert validation_title(tmp_path) == VALIDATION_TITLE
