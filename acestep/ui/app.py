"""The web app: Gradio Blocks, login, the folders it may serve, and the tabs in workflow order.

`launch_app` is what `launch.py` calls after the environment checks. The UI never loads
models itself: long jobs run the CLI in child processes (`acestep.jobs`, see ARCHITECTURE.md),
so closing the browser or restarting the app never stops them.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
from starlette.middleware import Middleware

from acestep import __version__
from acestep.ui.caption_tab import build_caption_tab
from acestep.ui.context import AppContext, Workspace
from acestep.ui.dataset_tab import build_dataset_tab
from acestep.ui.export_tab import build_export_tab
from acestep.ui.listen_tab import build_listen_tab
from acestep.ui.model_tab import build_model_tab
from acestep.ui.preprocess_tab import build_preprocess_tab
from acestep.ui.runs_tab import build_runs_tab
from acestep.ui.security import LoginGate
from acestep.ui.train_tab import build_train_tab

# The page takes no uploads, but Gradio's upload route exists: cap what it accepts.
MAX_UPLOAD = "200mb"
# FastAPI would describe every route at /openapi.json without a login: the app has no API to describe.
# The login gate answers 401 to every request without a session but the login page's.
SERVER_OPTIONS = {"openapi_url": None, "docs_url": None, "redoc_url": None, "middleware": [Middleware(LoginGate)]}

DEMO_BANNER = ("**Demo mode**: tiny random models and a few short songs, all made on this computer; every "
               "stage runs for real, but the tiny model's output is noise. Start without `--demo` to use "
               "the real models.")

# (tab label, elem_id, builder), in the order a musician walks through them
TABS = (
    ("Model", "tab-model", build_model_tab),
    ("Caption", "tab-caption", build_caption_tab),
    ("Dataset", "tab-dataset", build_dataset_tab),
    ("Preprocess", "tab-preprocess", build_preprocess_tab),
    ("Train", "tab-train", build_train_tab),
    ("Listen", "tab-listen", build_listen_tab),
    ("Export & Merge", "tab-export", build_export_tab),
    ("Runs", "tab-runs", build_runs_tab),
)


def build_app(ctx: AppContext) -> gr.Blocks:
    """The Blocks app over `ctx` (its workspace and job manager)."""
    with gr.Blocks(title="ACE-Step LoRA Trainer") as app:
        gr.Markdown(f"# ACE-Step 1.5 LoRA Trainer <small>v{__version__}</small>")
        gr.Markdown(f"Workspace: **{ctx.workspace.root}** · models: **{ctx.workspace.checkpoints}**. "
                    "Jobs keep running when the browser is closed; every browser sees the same jobs.",
                    elem_id="workspace-line")
        if ctx.demo:
            gr.Markdown(DEMO_BANNER, elem_id="demo-banner")
        tabs = []
        for label, elem_id, build in TABS:
            with gr.Tab(label, elem_id=elem_id) as tab:
                build(ctx)
            tabs.append(tab)
        tick_in_the_open_tab_only(tabs)
    # The page's handlers are for the page only: none is an API endpoint, and the login page
    # (which Gradio renders with the API description) names none of them.
    for function in app.fns.values():
        function.api_visibility = "private"
    return app


def timers_in(block) -> list[gr.Timer]:
    """The timers among `block`'s children, at any depth."""
    found = []
    for child in getattr(block, "children", []):
        found += [child] if isinstance(child, gr.Timer) else timers_in(child)
    return found


def tick_in_the_open_tab_only(tabs: list[gr.Tab]) -> None:
    """Opening a tab starts its timers and stops the others'. A tab once opened stays in the page,
    hidden, and its timers went on polling the jobs: each tick costs the browser a pass over the
    whole page (about 0.4 of a core for the Export tab's, measured in Chromium), so a page left open
    with every tab visited kept a core of the computer busy, and the server answered every tick."""
    timers = [timers_in(tab) for tab in tabs]
    everyone = [timer for group in timers for timer in group]
    for tab, own in zip(tabs, timers, strict=True):
        tab.select(lambda own=own: [gr.Timer(active=timer in own) for timer in everyone], outputs=everyone,
                   show_progress="hidden", queue=False)


def create_context(workspace_dir: Path, checkpoints_dir: Path, data_roots: tuple[Path, ...] = (),
                   demo: bool = False, progress=print) -> AppContext:
    """The app's context. In demo mode the workspace gets its own tiny models (in
    `<workspace>/checkpoints`), the demo songs and dataset (`acestep.ui.demo`), pre-selected in the tabs."""
    if demo:
        from acestep.ui.demo import prepare_demo

        workspace = Workspace(workspace_dir, Path(workspace_dir) / "checkpoints", tuple(data_roots)).create()
        return AppContext.create(workspace, demo=True, defaults=prepare_demo(workspace, progress=progress))
    return AppContext.create(Workspace(workspace_dir, checkpoints_dir, tuple(data_roots)))


def launch_app(host: str = "127.0.0.1", port: int = 7860, auth: list[tuple[str, str]] | None = None,
               checkpoints_dir: Path = Path("checkpoints"), workspace_dir: Path = Path("workspace"),
               data_roots: tuple[Path, ...] = (), demo: bool = False, block: bool = True) -> gr.Blocks:
    """Start the web UI over the workspace. Gradio serves files only from the workspace, the
    checkpoints folder and `data_roots` (never the whole disk); every path typed in the UI is
    checked against the same roots. With `demo`, the workspace gets the tiny models and demo songs."""
    ctx = create_context(Path(workspace_dir), Path(checkpoints_dir), tuple(data_roots), demo)
    app = build_app(ctx)
    app.queue().launch(server_name=host, server_port=port, auth=auth, prevent_thread_lock=not block,
                       quiet=not block, **serving_options(ctx))
    return app


def serving_options(ctx: AppContext) -> dict:
    """The launch() options that decide what the server serves and to whom: files from the roots
    only, capped uploads, no API description, the login gate, errors as messages."""
    return {"allowed_paths": [str(root) for root in ctx.workspace.roots()], "max_file_size": MAX_UPLOAD,
            "app_kwargs": dict(SERVER_OPTIONS), "show_error": True, "footer_links": ["gradio", "settings"]}
