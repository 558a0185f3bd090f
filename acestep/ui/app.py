"""The web app: Gradio Blocks, login, and the tabs.

`launch_app` is what `launch.py` calls after the environment checks. The UI never loads
models itself: long jobs run the CLI in child processes (see ARCHITECTURE.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gradio as gr

from acestep import __version__
from acestep.errors import AceStepError
from acestep.models.checkpoints import list_checkpoints
from acestep.ui.model_tab import build_model_tab

DEMO_BANNER = ("**Demo mode**: tiny random models, written locally; every stage runs for real, "
               "but what they produce is noise. Start without `--demo` to use the real models.")


def prepare_demo_checkpoints(folder: Path) -> Path:
    """Write the tiny checkpoints once (in a child process, so torch stays out of the UI)."""
    if any(info.name == "acestep-v15-turbo" and info.complete for info in list_checkpoints(folder)):
        return folder
    result = subprocess.run([sys.executable, "-m", "acestep.cli", "tiny-checkpoint", str(folder), "--overwrite"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise AceStepError(f"Could not write the demo models to {folder}: {result.stderr.strip()}")
    return folder


def build_app(checkpoints_dir: Path, demo: bool = False) -> gr.Blocks:
    """The Blocks app over `checkpoints_dir`."""
    with gr.Blocks(title="ACE-Step LoRA Trainer") as app:
        gr.Markdown(f"# ACE-Step 1.5 LoRA Trainer <small>v{__version__}</small>")
        if demo:
            gr.Markdown(DEMO_BANNER, elem_id="demo-banner")
        with gr.Tab("Model"):
            build_model_tab(checkpoints_dir)
    return app


def launch_app(host: str = "127.0.0.1", port: int = 7860, auth: list[tuple[str, str]] | None = None,
               checkpoints_dir: Path = Path("checkpoints"), demo: bool = False,
               block: bool = True) -> gr.Blocks:
    """Start the web UI. With `demo`, the tiny models are written into
    `<checkpoints_dir>/../demo-checkpoints` and used instead of the real ones."""
    if demo:
        checkpoints_dir = prepare_demo_checkpoints(Path(checkpoints_dir).parent / "demo-checkpoints")
    app = build_app(Path(checkpoints_dir), demo=demo)
    app.queue().launch(server_name=host, server_port=port, auth=auth, prevent_thread_lock=not block,
                       show_error=True, quiet=not block)
    return app
