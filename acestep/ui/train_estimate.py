"""The Train tab's live VRAM estimate and run plan, from the form's config.

The estimate needs the adapter's real parameter shapes, which `estimate_vram` gets from diffusers
and PEFT, so it runs in a helper process (`VramEstimator`): the UI process never imports torch.
The run plan (`acestep.training.plan`) reads the tensors folder's manifest, no torch either.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from collections import deque
from dataclasses import replace
from pathlib import Path

import acestep
from acestep.errors import AceStepError, CheckpointError
from acestep.gpu import SystemGpuReport
from acestep.gpu.estimate import GIB, gib
from acestep.models.checkpoints import DIT, resolve_model_path
from acestep.training import disk_space
from acestep.training.config import TrainingConfig, config_to_dict
from acestep.training.plan import plan_for
from acestep.ui.context import AppContext, PathRefused, holds_tensors
from acestep.ui.train_form import names_a_folder

ESTIMATE_TIMEOUT = 300.0  # seconds; the first estimate imports torch and diffusers in the helper process


# ---- the VRAM estimate --------------------------------------------------------------------------------
# The helper process: one JSON request per line in, one JSON reply per line out. What libraries
# print goes to stderr, so it never mixes with the replies.
ESTIMATE_WORKER = r"""
import json, os, sys
replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
os.dup2(2, 1)
sys.stdout = sys.stderr
from acestep.gpu.estimate import estimate_vram
from acestep.gpu.fit import settings_that_fit
from acestep.models.config import read_dit_config
from acestep.training.config import config_from_dict
for line in sys.stdin:
    try:
        request = json.loads(line)
        config = config_from_dict(request["config"], "estimate", complete=False)
        model = read_dit_config(request["model"]) if request["model"] else None
        reply = {"estimates": []}
        for capability, free in request["gpus"]:
            estimate = estimate_vram(config, model, capability=tuple(capability) if capability else None)
            fits = settings_that_fit(config, estimate, free) if free is not None and estimate.total_bytes > free else []
            reply["estimates"].append({"total_bytes": estimate.total_bytes, "describe": estimate.describe(),
                                       "fits": [[list(f.changes), f.estimate.total_bytes] for f in fits],
                                       "checkpoint_sizes": list(vars(estimate.checkpoint_sizes).values())})
    except Exception as error:
        reply = {"error": f"{type(error).__name__}: {error}"}
    replies.write(json.dumps(reply) + "\n")
    replies.flush()
"""


class VramEstimator:
    """`estimate_vram` in a helper process that lives as long as this object (the adapter's
    shapes are cached there, so estimates after the first take milliseconds). Thread-safe.
    `script` is the helper's code (tests pass a failing one)."""

    def __init__(self, timeout: float = ESTIMATE_TIMEOUT, script: str = ESTIMATE_WORKER):
        self.timeout, self.script = timeout, script
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._replies: queue.Queue = queue.Queue()
        self._stderr: deque[str] = deque(maxlen=20)

    def estimate(self, config: TrainingConfig, model_dir: Path | None, gpus: list[tuple]) -> list[dict]:
        """One {"total_bytes", "describe", "fits"} per (compute capability, free bytes) in `gpus`
        (capability None: unknown, the worst case; free None: unknown). "fits" lists, when the run
        needs more than is free, [changes, total bytes] of `settings_that_fit`. Raises AceStepError
        when the estimate fails, or the helper ends or does not answer within the timeout (with the
        helper's last error line; the next call starts a new helper)."""
        request = json.dumps({"config": config_to_dict(config), "model": str(model_dir) if model_dir else None,
                              "gpus": [[list(c) if c else None, free] for c, free in gpus]})
        with self._lock:
            process = self._start()
            try:
                process.stdin.write(request + "\n")
                process.stdin.flush()
                reply = self._replies.get(timeout=self.timeout)
            except (OSError, queue.Empty):
                reply = None
            if reply is None:
                self.close()
                self._stderr_reader.join(timeout=5)  # its last lines say why
                last = next((line for line in reversed(self._stderr) if line.strip()), "no output")
                raise AceStepError(f"The VRAM estimate's helper process ended or hung (its last error: "
                                   f"{last.strip()}); it is started again at the next change.")
        if "error" in reply:
            raise AceStepError(f"The VRAM estimate failed: {reply['error']}")
        return reply["estimates"]

    def close(self) -> None:
        """End the helper process (a later estimate starts a new one)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def _start(self) -> subprocess.Popen:
        if self._process is not None and self._process.poll() is None:
            return self._process
        self._replies, self._stderr = queue.Queue(), deque(maxlen=20)
        # From the folder holding the acestep package, so a source checkout imports this acestep.
        self._process = subprocess.Popen([sys.executable, "-c", self.script], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                         cwd=Path(acestep.__file__).resolve().parent.parent)
        threading.Thread(target=_read_replies, args=(self._process.stdout, self._replies), daemon=True).start()
        self._stderr_reader = threading.Thread(target=self._stderr.extend, args=(self._process.stderr,), daemon=True)
        self._stderr_reader.start()
        return self._process


def _read_replies(stream, replies: queue.Queue) -> None:
    for line in stream:
        try:
            replies.put(json.loads(line))
        except json.JSONDecodeError:
            replies.put({"error": f"unreadable reply {line.strip()[:200]!r}"})
    replies.put(None)  # the helper ended


def dit_folder(ctx: AppContext, config: TrainingConfig) -> Path | None:
    """The model folder of model.checkpoint when it is on disk inside the app's folders, else None."""
    workspace = ctx.workspace
    try:
        folder = (workspace.check_path(config.model.checkpoints_dir, what="checkpoints folder")
                  if config.model.checkpoints_dir else workspace.checkpoints)
        checkpoint = config.model.checkpoint.strip()
        if names_a_folder(ctx, checkpoint):
            checkpoint = str(workspace.check_path(checkpoint, must_exist=True, what="model"))
        return resolve_model_path(checkpoint, DIT, checkpoints_dir=folder)
    except (CheckpointError, PathRefused):
        return None


def estimate_text(ctx: AppContext, config: TrainingConfig, report: SystemGpuReport,
                  estimator: VramEstimator) -> str:
    """Markdown: the run's estimated peak VRAM, whether it fits each GPU's free memory now, and
    the estimate by part. Raises AceStepError when the estimate cannot be made."""
    model = dit_folder(ctx, config)
    pairs = list(dict.fromkeys((gpu.compute_capability, gpu.free_bytes) for gpu in report.gpus)) or [(None, None)]
    estimates = dict(zip(pairs, estimator.estimate(config, model, pairs), strict=True))
    first = next(iter(estimates.values()))
    lines = [f"**Estimated peak VRAM: {gib(first['total_bytes'])}**"
             + ("" if model else f" (for the 2B ACE-Step 1.5 DiT: `{config.model.checkpoint}` is not on disk)")]
    if not report.gpus:
        lines.append(f"No GPU to compare it with ({report.message}).")
    for gpu in report.gpus:
        estimate = estimates[(gpu.compute_capability, gpu.free_bytes)]
        spare = gpu.free_bytes - estimate["total_bytes"]
        if spare >= 0:
            verdict = f"fits: {gib(gpu.free_bytes)} free, {spare / GIB:.2f} GiB to spare"
        else:
            fits = "; ".join(" ".join(f"`{change}`" for change in changes) + f" (about {gib(total)})"
                             for changes, total in estimate["fits"])
            verdict = (f"**does not fit now**: {gib(gpu.free_bytes)} free, {-spare / GIB:.2f} GiB short; "
                       + (f"these settings would fit: {fits}" if fits else
                          "no usual setting makes it fit: free memory on the GPU"))
        lines.append(f"GPU {gpu.index} {gpu.name}: {verdict}.")
    lines.append(f"```\n{first['describe']}\n```")
    try:
        run_dir = disk_space.run_folder_of(ctx.workspace.check_path(config.run.output_dir, what="runs folder"),
                                           config.run.name)
        lines.append(disk_space.disk_summary(run_dir, disk_space.CheckpointSizes(*first["checkpoint_sizes"]),
                                             config.run.keep_checkpoints))
    except (AceStepError, OSError):  # a runs folder outside the workspace or one the system refuses: Start says so
        pass
    return "\n\n".join(lines)


def plan_text(ctx: AppContext, config: TrainingConfig, report: SystemGpuReport) -> str:
    """Markdown: the run's plan (`acestep.training.plan`) over the chosen tensors folder: songs,
    batches and optimizer steps per epoch, steps in all, what the crops show, and what deserves a
    look; '' until a folder with a manifest is chosen (Start says what is missing)."""
    if not (config.data.tensors_dir or "").strip():
        return ""
    try:
        folder = ctx.workspace.check_path(config.data.tensors_dir, what="tensors folder (data.tensors_dir)")
        if not holds_tensors(folder):
            return ""
        plan = plan_for(replace(config, data=replace(config.data, tensors_dir=str(folder))), len(report.gpus))
    except AceStepError as error:
        return f"**Run plan**: {error}"
    notes = "".join(f"\n- {note}" for note in plan.notes())
    return f"**Run plan.** {plan.describe()}" + (f"\n{notes}" if notes else "")
