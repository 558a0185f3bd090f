"""The training loop on Lightning Fabric: one GPU, several GPUs (DDP) or several nodes, one code path.

What it guarantees:
- the objective of the pre-training (see `step.py`), masked to real frames;
- gradient accumulation whose logged loss is the true per-sample loss, with a partial group at
  the end of an epoch flushed by an optimizer step (counted in the scheduler's total);
- exact resume: every random draw is a function of (seed, rank, epoch, batch), data order of
  (seed, epoch), and checkpoints hold the adapter, optimizer, scheduler, counters and RNG states;
- no host-device sync per micro-step: losses are read at the log interval; the only per-step sync
  is one boolean, whether the gradient is finite, needed to skip a bad step on every rank alike;
- stop (Ctrl+C or a STOP file in the run folder) finishes the step, saves, and returns;
- a checkpoint at least every `run.save_every_minutes`, whatever the other save settings.
"""

from __future__ import annotations

import copy

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from acestep.errors import TrainingError
from acestep.files import recover_replaced_folder
from acestep.gpu.fit import out_of_memory_message
from acestep.inference.training_hook import TrainingPreviews
from acestep.training import checkpoint as ckpt
from acestep.training.adapters import load_saved_adapter
from acestep.training.compilation import allocate_gradient_buffers, needs_gradient_buffers, reporting_fallbacks
from acestep.training.config import TrainingConfig
from acestep.training.data import Lookahead
from acestep.training.disk_space import CheckpointSizes, disk_warning, tensor_bytes
from acestep.training.events import make_event
from acestep.training.loss_interval import LossInterval
from acestep.training.resume_settings import ResumeSettings
from acestep.training.run_layout import ADAPTER_DIR, CONFIG_FILE, NAMED_ADAPTERS, STOP_FILE
from acestep.training.session import TrainingSession
from acestep.training.state import restore_rng, rng_states

MOVING_AVERAGE_EPOCHS = 5
clock = time.monotonic  # what run.save_every_minutes is measured with (tests replace it)


@dataclass
class TrainingResult:
    run_dir: Path
    status: str  # completed | stopped | early_stopped
    step: int
    epoch: int
    last_loss: float | None = None
    best_metric: float | None = None


@dataclass
class Progress:
    """Counters that a checkpoint saves and a resume restores."""

    step: int = 0
    epoch: int = 0
    batches_done: int = 0  # batches of `epoch` already trained
    epoch_metrics: list[float] = field(default_factory=list)
    best_metric: float | None = None
    best_moving_average: float | None = None
    epochs_without_improvement: int = 0
    nonfinite_in_a_row: int = 0
    last_loss: float | None = None

    def to_state(self) -> dict:
        return dict(self.__dict__)


def dataset_identity(session: TrainingSession) -> str:
    """What the data order depends on: the samples and the split (a resume must see the same)."""
    manifest = session.samples.manifest
    text = "|".join(f"{s.id}:{s.key}" for s in manifest.samples) + f"|{session.train_indices}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Trainer:
    """Runs one `TrainingSession` to the end (or to a stop)."""

    def __init__(self, session: TrainingSession):
        self.s = session
        self.config: TrainingConfig = session.config
        self.fabric = session.fabric
        self.progress = Progress()
        self.stop_requested = False
        self.saved_at: tuple[int, int, int] | None = None
        self.saved_clock = clock()  # when the last checkpoint was written (or the run started)
        self.interval = LossInterval(self.fabric.device)
        self.previews = TrainingPreviews(session, self.emit)  # run.preview_*: audio previews, rank 0
        self._group_start: tuple | None = None  # the state where the current accumulation group began
        self.resume_settings: ResumeSettings | None = None  # a resume's settings, when they changed
        self.set_aside: Path | None = None  # where a resume moved the run's later work (superseded/...)
        self.disk_checked = False  # whether the run folder's disk was checked (after the first step)
        # CUDA graphs with accumulation: the gradients stay in buffers of their own, zeroed in place
        self.gradient_buffers = needs_gradient_buffers(self.config.run.cuda_graphs,
                                                       self.config.optimizer.gradient_accumulation)

    # ---- events --------------------------------------------------------------------------------
    def emit(self, kind: str, **fields) -> None:
        if self.fabric.global_rank == 0:
            event = make_event(kind, **fields)
            for listener in self.s.listeners:
                listener(event)

    # ---- checkpoints ---------------------------------------------------------------------------
    def training_state(self) -> dict:
        """What a checkpoint holds beside its adapter folder. The folder holds the adapter the run
        hands out, fp32 as trained, and is read back on a resume, so the weights are not stored
        twice: without a moving average it holds the weights; with one it holds the average, and
        the weights are stored here."""
        average = self.s.average
        return {"progress": self.progress.to_state(), "epoch": self.progress.epoch,
                "optimizer": self.s.optimizer.state_dict(),
                "scheduler": self.s.scheduler.state_dict(), "rng": rng_states(),
                "dataset": dataset_identity(self.s), "world_size": self.fabric.world_size,
                "interval": self.interval.state(),
                "config": self.s.config_dict,
                **({"adapter": self.s.adapter.state_dict(), "average": average.counts()} if average is not None
                   else {})}

    def save_checkpoint(self, reason: str) -> None:
        position = (self.progress.step, self.progress.epoch, self.progress.batches_done)
        if self.saved_at == position:
            return  # this very state is on disk already
        self.saved_at = position
        self.saved_clock = clock()
        if self.fabric.global_rank == 0:
            folder = ckpt.write_checkpoint(self.s.run_dir, self.progress.step, self.training_state(),
                                           lambda where: self.s.save_adapter(where, self.progress))
            ckpt.prune_checkpoints(self.s.run_dir, self.config.run.keep_checkpoints)
            self.emit("checkpoint", step=self.progress.step, epoch=self.progress.epoch,
                      message=f"{reason}: {folder}")
        self.fabric.barrier()

    def save_named(self, name: str) -> Path:
        folder = self.s.run_dir / name
        if self.fabric.global_rank == 0:
            with ckpt.atomic_directory(folder) as tmp:
                self.s.save_adapter(tmp, self.progress)
        self.fabric.barrier()
        return folder

    def restore(self, folder: Path, force: bool) -> None:
        state = ckpt.read_checkpoint(folder)
        problems = []
        if state["dataset"] != dataset_identity(self.s):
            problems.append("the dataset (samples or validation split) differs from the one the run started with")
        if state["world_size"] != self.fabric.world_size:
            problems.append(f"it ran on {state['world_size']} process(es), this run has {self.fabric.world_size}")
        if problems and not force:
            raise TrainingError(f"Cannot resume from {folder}: " + "; ".join(problems)
                                + f". The data order would differ; to resume anyway, run `acestep-trainer train "
                                f"--resume {self.s.run_dir} --force`, or start a new run on this dataset.")
        if self.fabric.global_rank == 0:  # what the interrupted run was writing or deleting
            ckpt.remove_leftovers(self.s.run_dir)
            for name in NAMED_ADAPTERS:
                recover_replaced_folder(self.s.run_dir / name)
        self.restore_adapter(folder, state)
        self.s.optimizer.load_state_dict(state["optimizer"])
        self.s.scheduler.load_state_dict(state["scheduler"])
        self.progress = Progress(**state["progress"])
        self.saved_at = (self.progress.step, self.progress.epoch, self.progress.batches_done)
        if self.fabric.global_rank == 0:
            self.set_aside = ckpt.set_aside_later_work(self.s.run_dir, self.progress.step, not self._finished())
        self.fabric.barrier()
        self.interval.restore(state["interval"])
        restore_rng(state["rng"])
        self.emit("start", step=self.progress.step, epoch=self.progress.epoch,
                  message=f"resumed from {folder}" + (" (forced: " + "; ".join(problems) + ")" if problems else ""))

    def restore_adapter(self, folder: Path, state: dict) -> None:
        """The adapter's weights, and its moving average, from a checkpoint (`training_state`).
        Checkpoints written before 2026-11-28 hold the weights and the average in their state."""
        adapter, average = self.s.adapter, self.s.average
        saved = folder / ADAPTER_DIR
        if average is not None:  # optimizer.ema_decay cannot change on a resume (resume_settings)
            if "average" not in state:
                raise TrainingError(f"Cannot resume from {folder}: it holds no adapter average, and this run keeps "
                                    "one (optimizer.ema_decay). Resume with the settings the run was started with.")
            if "average" in state["average"]:
                average.restore(state["average"], str(folder))
            else:  # the adapter folder holds the average
                load_saved_adapter(adapter, saved)
                average.restore({**state["average"], "average": [p.detach() for p in average.parameters]}, str(folder))
        if "adapter" in state:
            adapter.load_state_dict(state["adapter"])
        else:
            load_saved_adapter(adapter, saved)

    # ---- out of memory ---------------------------------------------------------------------------
    def out_of_memory(self, error: BaseException) -> TrainingError:
        """After an out-of-memory error inside a step: free what the step held, go back to where
        its accumulation group began (the adapter has not changed since the last optimizer step),
        save that state as a checkpoint, and return the error to raise, with the estimate and the
        settings that would fit. A resume from the checkpoint continues exactly."""
        s = self.s
        s.optimizer.zero_grad(set_to_none=True)
        if self.fabric.device.type == "cuda":
            torch.cuda.empty_cache()
        if self._group_start is not None:
            progress, interval, rng = self._group_start
            self.progress = Progress(**copy.deepcopy(progress.to_state()))
            self.interval.restore_snapshot(interval)
            restore_rng(rng)
        self.save_checkpoint("out of memory")
        device = self.fabric.device
        total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
        return TrainingError(out_of_memory_message(self.config, total, self.progress.step, s.run_dir, error))

    # ---- stop ------------------------------------------------------------------------------------
    def request_stop(self) -> None:
        self.stop_requested = True

    def _stop_asked(self) -> bool:
        """Whether this process was asked to stop: a signal, or the run's STOP file."""
        return self.stop_requested or (self.s.run_dir / STOP_FILE).exists()

    def _agreed(self, local: list[bool], at_log_interval: bool) -> list[bool]:
        """Decisions every rank must take alike (stop, save): as they are in one process; under
        DDP true where any rank has them true, agreed on at log intervals only (all false between),
        so that every rank acts after the same step without a collective on every step."""
        if self.fabric.world_size == 1:
            return local
        if not at_log_interval:
            return [False] * len(local)
        flags = torch.tensor([1.0 if flag else 0.0 for flag in local], device=self.fabric.device)
        return [value > 0 for value in self.fabric.all_reduce(flags, reduce_op="max").tolist()]

    # ---- the loop ----------------------------------------------------------------------------------
    def _start_warnings(self) -> list[str]:
        cfg, s = self.config, self.s
        warnings = []
        warmup = cfg.optimizer.warmup_steps
        if cfg.optimizer.scheduler != "constant" and warmup >= s.total_steps:
            warnings.append(f"optimizer.warmup_steps ({warmup}) is not below the run's {s.total_steps} optimizer "
                            "steps: the learning rate never reaches optimizer.lr")
        if s.adapter.kind == "lokr" and cfg.adapter.dropout > 0:
            warnings.append(f"adapter.dropout {cfg.adapter.dropout:g} has no effect on LoKr: LyCORIS rebuilds each "
                            "LoKr weight and applies no dropout that way; the run trains without adapter dropout")
        if self.resume_settings is not None and self.resume_settings.warning:
            warnings.append(self.resume_settings.warning)
        if self.set_aside is not None:
            warnings.append(f"resumed from step {self.progress.step}: what the run had written after it (later "
                            f"checkpoints, final/ or best/) was moved to {self.set_aside}, so it neither resumes "
                            "nor exports in place of this training; export it from there if you want it")
        p = self.progress
        if self._finished():
            warnings.append(f"the run had already finished (step {p.step}, epoch {p.epoch}): nothing is left to train. "
                            "To train longer, resume with a larger run.epochs (--set run.epochs=N) or run.max_steps")
        return warnings

    def _finished(self) -> bool:
        """Whether the run has nothing left to train (steps or epochs)."""
        return self.progress.step >= self.s.total_steps or self.progress.epoch >= self.config.run.epochs

    def _train_epochs(self) -> str:
        """Epochs until the end, a stop or early stopping: "completed", "stopped" or the early stop's status."""
        cfg, s, p = self.config, self.s, self.progress
        interval = self.interval
        while p.epoch < cfg.run.epochs and p.step < s.total_steps:
            outcome = self._run_epoch(interval)
            if outcome == "stopped":
                return "stopped"
            if outcome == "max_steps":  # the step budget ended inside an epoch
                break
            outcome = self._end_epoch(interval)
            if outcome != "continue":
                return outcome
        return "completed"

    def run(self) -> TrainingResult:
        cfg, s, p = self.config, self.s, self.progress
        self.emit("start", step=p.step, epoch=p.epoch, message=s.start_message())
        for message in self._start_warnings():
            self.emit("warning", step=p.step, epoch=p.epoch, message=message)
        self.previews.check_models()  # a preview model that cannot be found stops the run now, not hours in
        with reporting_fallbacks(lambda message: self.emit("warning", step=p.step, epoch=p.epoch, message=message)):
            status = self._train_epochs()
        if status != "stopped":
            if status == "completed":
                self.save_checkpoint("end of training")
            folder = self.save_named("final")
            reason = ("finished" if status == "completed" else
                      f"early stop: no improvement for {cfg.run.early_stopping_patience} epochs")
            self.emit("done", step=p.step, epoch=p.epoch, loss=p.last_loss, message=f"{reason}: adapter in {folder}")
        s.check_ranks_agree()
        return TrainingResult(s.run_dir, status, p.step, p.epoch, p.last_loss, p.best_metric)

    def _run_epoch(self, interval: LossInterval) -> str:
        s, p, cfg = self.s, self.progress, self.config
        batches = Lookahead(s.epoch_batches(p.epoch, skip=p.batches_done))
        count = s.batches_per_epoch
        accumulation = cfg.optimizer.gradient_accumulation
        s.model.train()
        if self.gradient_buffers:
            allocate_gradient_buffers(param for group in s.optimizer.param_groups for param in group["params"])
        for batch in batches:
            index = p.batches_done
            group_start = (index // accumulation) * accumulation
            group_size = min(accumulation, count - group_start)
            last_of_group = index - group_start + 1 == group_size
            if index == group_start:  # what an out-of-memory stop goes back to (device copies: no sync)
                self._group_start = (Progress(**copy.deepcopy(p.to_state())), self.interval.snapshot(),
                                     rng_states())
            generator = s.step_generator(p.epoch, index)
            batch = batch.to(self.fabric.device)
            with self.fabric.no_backward_sync(s.model, enabled=not last_of_group):
                with self.fabric.autocast():
                    loss, per_sample = s.batch_loss(batch, generator)
                self.fabric.backward(loss / group_size)
            batches.prefetch()  # host work while the GPU runs the backward pass just queued
            interval.add(per_sample.detach(), len(batch))
            p.batches_done += 1
            if not last_of_group:
                continue
            stepped = self._optimizer_step()
            if not stepped:
                continue
            if not self.disk_checked:
                self._check_disk()
            at_log = p.step % cfg.run.log_every_steps == 0 or p.step >= s.total_steps
            if at_log:
                self._log(interval)
            if cfg.run.save_every_steps and p.step % cfg.run.save_every_steps == 0:
                self.save_checkpoint(f"every {cfg.run.save_every_steps} steps")
            self.previews.after_step(p.step, p.epoch)
            minutes = cfg.run.save_every_minutes
            stop, save_due = self._agreed(
                [self._stop_asked(), bool(minutes) and clock() - self.saved_clock >= 60 * minutes], at_log)
            if save_due and not stop:
                self.save_checkpoint(f"{minutes:g} minutes since the last save")
            if stop:
                self.save_checkpoint("stopped on request")
                self.emit("stop", step=p.step, epoch=p.epoch,
                          message=f"stopped on request at step {p.step}; resume with --resume {s.run_dir}")
                return "stopped"
            if p.step >= s.total_steps:
                return "continue" if p.batches_done == count else "max_steps"
        return "continue"

    def _optimizer_step(self) -> bool:
        """Clip, check the gradient is finite (the per-step sync), step or skip."""
        s, p, cfg = self.s, self.progress, self.config
        max_norm = cfg.optimizer.grad_clip if cfg.optimizer.grad_clip else float("inf")
        norm = self.fabric.clip_gradients(s.model, s.optimizer, max_norm=max_norm, error_if_nonfinite=False)
        finite = self._gradient_is_finite(norm)
        if finite:
            self.interval.add_grad_norm(norm)
            s.optimizer.step()
            s.scheduler.step()
            if s.average is not None:
                s.average.update()
            p.step += 1
            p.nonfinite_in_a_row = 0
        else:
            p.nonfinite_in_a_row += 1
            self.emit("warning", step=p.step, epoch=p.epoch,
                      message=f"non-finite gradient: step skipped ({p.nonfinite_in_a_row} in a row)")
        s.optimizer.zero_grad(set_to_none=not self.gradient_buffers)
        if p.nonfinite_in_a_row >= cfg.run.nan_patience:
            self.save_checkpoint("halted on non-finite loss")
            raise TrainingError(
                f"The loss was not finite for {p.nonfinite_in_a_row} optimizer steps in a row; training halted at "
                f"step {p.step} (the adapter was not updated by those steps; the last checkpoint is safe). Lower the "
                "learning rate, use bf16 instead of fp16, or check the tensors folder.")
        return finite

    @staticmethod
    def _gradient_is_finite(norm: torch.Tensor) -> bool:
        """The step's one host-device sync: the host waits for the gradient's norm (every rank's,
        under DDP, so all skip alike). `benchmarks/training_step.py --no-finite-check` measures it."""
        return bool(torch.isfinite(norm).item())

    def _check_disk(self) -> None:
        """Once, after the first optimizer step (the optimizer's state exists then): a warning when
        the run folder's disk cannot hold the checkpoints the run has yet to write."""
        self.disk_checked = True
        if self.fabric.global_rank != 0:
            return
        adapter = tensor_bytes(self.s.adapter.state_dict())
        sizes = CheckpointSizes(tensor_bytes(self.training_state()) + adapter, adapter)
        message = disk_warning(self.s.run_dir, sizes, self.config.run.keep_checkpoints)
        if message:
            self.emit("warning", step=self.progress.step, epoch=self.progress.epoch, message=message)

    def _log(self, interval: LossInterval) -> None:
        p = self.progress
        loss, samples, seconds = interval.read(self.fabric)
        grad_norm, grad_norm_max = interval.read_grad_norm()
        if loss is not None:
            p.last_loss = loss
        vram = torch.cuda.max_memory_allocated() / 2**30 if self.fabric.device.type == "cuda" else None
        self.emit("log", step=p.step, epoch=p.epoch, loss=loss, lr=self.s.scheduler.get_last_lr()[0], vram=vram,
                  samples_per_second=samples / seconds if seconds > 0 else None, grad_norm=grad_norm,
                  grad_norm_max=grad_norm_max)

    def _end_epoch(self, interval: LossInterval) -> str:
        s, p, cfg = self.s, self.progress, self.config
        finished_epoch = p.epoch
        epoch_loss = interval.read_epoch(self.fabric)
        p.epoch += 1
        p.batches_done = 0
        if epoch_loss is not None:
            self.emit("epoch", step=p.step, epoch=finished_epoch, loss=epoch_loss)
        metric = epoch_loss
        if s.has_validation:
            metric = s.validation_loss()
            self.emit("validation", step=p.step, epoch=finished_epoch, val_loss=metric)
        if self.fabric.device.type == "cuda":
            torch.cuda.empty_cache()
        if metric is not None:
            self._track_best(metric, finished_epoch)
        if cfg.run.save_every_epochs and p.epoch % cfg.run.save_every_epochs == 0:
            self.save_checkpoint(f"end of epoch {finished_epoch}")
        self.previews.after_epoch(p.step, p.epoch, finished_epoch)
        if cfg.run.early_stopping_patience and p.epochs_without_improvement >= cfg.run.early_stopping_patience:
            return "early_stopped"
        if self._agreed([self._stop_asked()], at_log_interval=True)[0]:
            self.save_checkpoint("stopped on request")
            self.emit("stop", step=p.step, epoch=p.epoch,
                      message=f"stopped on request at step {p.step}; resume with --resume {s.run_dir}")
            return "stopped"
        return "continue"

    def _track_best(self, metric: float, finished_epoch: int) -> None:
        p, cfg = self.progress, self.config
        p.epoch_metrics.append(metric)
        average = sum(p.epoch_metrics[-MOVING_AVERAGE_EPOCHS:]) / len(p.epoch_metrics[-MOVING_AVERAGE_EPOCHS:])
        if p.best_moving_average is None or average < p.best_moving_average - cfg.run.early_stopping_min_delta:
            p.best_moving_average = average
            p.epochs_without_improvement = 0
        else:
            p.epochs_without_improvement += 1
        # With a validation split the raw validation loss picks the best epoch; without one the
        # moving average of the training loss does (a single epoch's loss is too noisy).
        score = metric if self.s.has_validation else average
        if finished_epoch + 1 >= cfg.run.best_after_epochs and (p.best_metric is None or score < p.best_metric):
            p.best_metric = score
            folder = self.save_named("best")
            window = min(len(p.epoch_metrics), MOVING_AVERAGE_EPOCHS)
            measure = ("validation loss" if self.s.has_validation
                       else f"training loss averaged over the last {window} epoch(s)")
            self.emit("best", step=p.step, epoch=finished_epoch, loss=score,
                      message=f"new best adapter in {folder} ({measure} {score:.5f})")


def train(config: TrainingConfig, resume: Path | None = None, force: bool = False, listeners=(),
          stop_signal=None) -> TrainingResult:
    """Train an adapter as `config` says (or continue the run in `resume`). Returns how it ended.

    `listeners` receive every event (besides `events.jsonl` and TensorBoard); `stop_signal`, if
    given, is called with the trainer's `request_stop` so a signal handler can ask for a stop.
    Raises `TrainingError`, `ConfigError`, `CheckpointError` or `PreprocessError` with the fix.
    """
    settings = None
    if resume is not None:  # changed settings are refused or accepted before anything loads
        run_dir, checkpoint = ckpt.resolve_resume(resume)
        settings = ResumeSettings(run_dir / CONFIG_FILE, checkpoint, config, force)
    session = TrainingSession.start(config, resume=resume, listeners=listeners)
    trainer = Trainer(session)
    try:
        if stop_signal is not None:
            stop_signal(trainer.request_stop)
        if session.resume_from is not None:
            trainer.restore(session.resume_from, force)
            trainer.resume_settings = settings  # said with the run's other warnings, after its start
            if session.fabric.global_rank == 0:
                settings.save()
        try:
            return trainer.run()
        except torch.OutOfMemoryError as exc:
            raise trainer.out_of_memory(exc) from exc
    except KeyboardInterrupt:  # stopped at once (Ctrl+C twice): a stop the user asked for, not a failure
        latest = ckpt.latest_checkpoint(session.run_dir)
        then = (f"resume with --resume {session.run_dir} (from {latest.name})" if latest is not None
                else "it had written no checkpoint yet: start it again")
        trainer.emit("stop", step=trainer.progress.step, epoch=trainer.progress.epoch,
                     message=f"aborted at step {trainer.progress.step} without saving; {then}")
        raise
    except BaseException as exc:
        trainer.emit("error", step=trainer.progress.step, epoch=trainer.progress.epoch,
                     message=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        session.close()
