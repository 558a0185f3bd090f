"""What the tab tests share: a fresh workspace, run folders written by hand, and a run trained for real."""

import json
import shutil
from pathlib import Path

import pytest

from acestep.ui.context import AppContext, Workspace

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
NEEDS_CHROMIUM = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason="chromium is not installed (apt install chromium chromium-driver)")


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (the system's; never `playwright install`), one per test module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()




@pytest.fixture
def ctx(tmp_path) -> AppContext:
    """A fresh workspace's app context (the tab tests that need more define their own)."""
    return AppContext.create(Workspace(tmp_path / "workspace", checkpoints=tmp_path / "checkpoints"))


@pytest.fixture
def songs(ctx) -> Path:
    """An empty audio/songs folder in that workspace."""
    folder = ctx.workspace.audio / "songs"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture(scope="session")
def made(tmp_path_factory):
    """prepare_demo run once in a fresh workspace: (workspace, defaults, progress messages). The
    demo tests look at what it made; the browser tests start from a copy of its models and songs."""
    from acestep.ui import demo

    root = tmp_path_factory.mktemp("demo")
    workspace = Workspace(root, root / "checkpoints")
    messages = []
    defaults = demo.prepare_demo(workspace, progress=messages.append)
    return workspace, defaults, messages


def write_adapter(folder: Path, step: int, kind: str = "lora") -> Path:
    """An adapter folder's files (contents do not matter for the UI, which only reads folders)."""
    folder.mkdir(parents=True)
    if kind == "lokr":
        (folder / "lokr_weights.safetensors").write_bytes(b"x")
        (folder / "lokr_config.json").write_text(json.dumps({"step": step, "adapter_type": "lokr"}))
        return folder
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8, "use_dora": kind == "dora"}))
    (folder / "adapter_model.safetensors").write_bytes(b"x")
    (folder / "training_metadata.json").write_text(json.dumps(
        {"checkpoint": "/somewhere/acestep-v15-turbo", "adapter_type": kind, "rank": 8, "step": step,
         "trigger_tag": "mystyle"}))
    return folder


def write_run(runs: Path, name: str, kind: str = "lora") -> Path:
    run = runs / name
    run.mkdir(parents=True)
    (run / "config.toml").write_text(f'[adapter]\ntype = "{kind}"\nrank = 8\n')
    (run / "events.jsonl").write_text("")
    write_adapter(run / "final", 30, kind)
    write_adapter(run / "best", 20, kind)
    for step in (10, 20):
        (run / "checkpoints" / f"step-{step:06d}").mkdir(parents=True)
        write_adapter(run / "checkpoints" / f"step-{step:06d}" / "adapter", step, kind)
        (run / "checkpoints" / f"step-{step:06d}" / "COMPLETE").write_text("")
    write_adapter(run / "checkpoints" / "step-000025" / "adapter", 25, kind)  # being written: no COMPLETE
    (run / "checkpoints" / "step-000005").mkdir()
    (run / "checkpoints" / "step-000005" / "COMPLETE").write_text("")  # complete but its adapter is gone
    return run



@pytest.fixture
def trained(tmp_path, tiny_checkpoints):
    """A workspace whose checkpoints folder holds the tiny models and whose runs/ holds a run
    trained on the DiT for a few steps."""
    from acestep.training.config import TrainingConfig, apply_overrides
    from acestep.training.loop import train
    from training.conftest import write_tensors_dir

    checkpoints = shutil.copytree(tiny_checkpoints, tmp_path / "checkpoints")  # with the VAE and text encoder
    dit = checkpoints / "acestep-v15-turbo"
    ctx = AppContext.create(Workspace(tmp_path / "ws", checkpoints=checkpoints))
    tensors = write_tensors_dir(ctx.workspace.tensors / "songs", dit, 2)
    config = apply_overrides(TrainingConfig(), [
        f"data.tensors_dir={tensors}", f"model.checkpoint={dit}", f"run.output_dir={ctx.workspace.runs}",
        "run.name=tiny", "adapter.rank=4", "adapter.alpha=8", "optimizer.lr=1e-2", "optimizer.warmup_steps=0",
        "run.epochs=1", "data.max_seconds=1.2"])
    assert train(config).status == "completed"
    return ctx
