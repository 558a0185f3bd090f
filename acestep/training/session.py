"""Everything a run needs, set up once: Fabric, the run folder, the frozen transformer with its
adapter, the data, the optimizer and scheduler, and the listeners.

`TrainingSession.start` does the setup; the loop (`loop.py`) only trains.
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from acestep.errors import TrainingError
from acestep.gpu.precision import native_bf16
from acestep.training import checkpoint as ckpt
from acestep.training.adapters import Adapter, add_adapter, save_adapter
from acestep.training.averaging import AdapterAverage
from acestep.training.compilation import check_compile_support, check_cuda_graphs_support, compile_blocks
from acestep.training.config import TrainingConfig, config_to_dict, load_config, parse_devices, save_config
from acestep.training.data import CroppedSamples, EpochBatches, EpochKeyedBatches, collate, derived_seed
from acestep.training.events import EventLog, TensorBoardListener
from acestep.training.optim import build_optimizer, build_scheduler
from acestep.training.plan import crop_frames, optimizer_steps_per_epoch, plan_run
from acestep.training.quantization import load_transformer, parameter_count, require_bitsandbytes
from acestep.training.recompute import RECOMPUTE_FLAG, enable_recompute
from acestep.training.run_layout import CONFIG_FILE, STOP_FILE
from acestep.training.run_lock import RunLock
from acestep.training.step import Objective, batch_loss, validation_loss


def resolve_precision(config: TrainingConfig, accelerator: str) -> tuple[str, torch.dtype]:
    """(Fabric precision, dtype of the frozen base weights) for the run."""
    precision = config.run.precision
    cuda = accelerator == "cuda"
    if precision == "auto":
        if cuda:
            precision = "bf16-mixed" if native_bf16() else "16-mixed"
        else:
            precision = "32-true"
    dtype_name = config.model.dtype
    if dtype_name == "auto":
        dtype_name = {"bf16-mixed": "bf16", "16-mixed": "fp16"}.get(precision, "fp32") if cuda else "fp32"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    return precision, dtype


MIXED_PRECISIONS = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}  # Fabric precision -> autocast dtype


def compute_dtype(precision: str, model_dtype: torch.dtype) -> torch.dtype:
    """The dtype the model computes in: autocast's under mixed precision, else the weights'."""
    return MIXED_PRECISIONS.get(precision, model_dtype)


def adapt_for_training(transformer: torch.nn.Module, config: TrainingConfig, precision: str) -> Adapter:
    """Ready a loaded transformer for training as `config` says, in this order: gradient
    checkpointing (in the form compiled blocks need when `run.compile`), the adapter, no fp32
    round trips of the adapted layers' inputs under mixed `precision`, then compiled blocks.
    Returns the adapter. The benchmarks (`benchmarks/common.py`) build their sessions with it too."""
    if config.run.gradient_checkpointing:
        enable_recompute(transformer, config.run.gradient_checkpointing_ratio, compiled=config.run.compile)
    a = config.adapter
    adapter = add_adapter(transformer, a.type, a.rank, a.alpha, a.dropout, a.targets, a.mlp, a.modules, a.lokr_factor)
    if precision in MIXED_PRECISIONS:  # training under autocast: no fp32 round trips of the layers' inputs
        adapter.skip_input_casts()
    if config.run.compile:
        compile_blocks(transformer, cuda_graphs=config.run.cuda_graphs)
    return adapter


def resolve_accelerator(name: str) -> str:
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def new_run_dir(config: TrainingConfig) -> Path:
    """`run.output_dir/run.name` (default: date-time and adapter type); never an existing run."""
    name = config.run.name or time.strftime("%Y%m%d-%H%M%S") + f"-{config.adapter.type}"
    folder = Path(config.run.output_dir).expanduser().resolve() / name
    if folder.exists() and any(folder.iterdir()):
        raise TrainingError(f"{folder} already holds a run; resume it with --resume {folder}, or choose another "
                            "run.name.")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class TrainingSession:
    config: TrainingConfig
    fabric: object
    run_dir: Path
    model: torch.nn.Module
    adapter: Adapter
    optimizer: torch.optim.Optimizer
    scheduler: object
    samples: object
    train_set: CroppedSamples
    validation_set: CroppedSamples | None
    train_indices: list[int]
    objective: Objective
    silence_latent: torch.Tensor
    null_condition_emb: torch.Tensor
    model_dtype: torch.dtype
    batches_per_epoch: int
    total_steps: int
    checkpoint_info: dict
    resume_from: Path | None = None
    attention: str = ""  # the attention plan, as AttentionPlan.describe() words it
    average: AdapterAverage | None = None  # optimizer.ema_decay: the adapter's moving average
    listeners: list = field(default_factory=list)
    closers: list = field(default_factory=list)
    run_lock: RunLock | None = None  # rank 0's hold on the run folder: no other process trains it meanwhile
    _epoch_sampler: EpochKeyedBatches = field(default_factory=EpochKeyedBatches, init=False, repr=False)
    _train_loader: DataLoader | None = field(default=None, init=False, repr=False)

    @property
    def config_dict(self) -> dict:
        return config_to_dict(self.config)

    @property
    def has_validation(self) -> bool:
        return self.validation_set is not None and len(self.validation_set) > 0

    # ---- set-up ------------------------------------------------------------------------------------
    @classmethod
    def start(cls, config: TrainingConfig, resume: Path | None = None, listeners=()) -> TrainingSession:
        from lightning_fabric import Fabric

        from acestep.inference.training_hook import check_preview_sampling
        from acestep.models.attention import plan_attention
        from acestep.models.load import encoder_digest
        from acestep.preprocess.tensors import PreprocessedDataset, check_model_matches

        resume_from, run_lock = None, None
        if resume is not None:
            run_dir, resume_from = ckpt.resolve_resume(resume)
        accelerator = resolve_accelerator(config.run.accelerator)
        precision, model_dtype = resolve_precision(config, accelerator)
        fabric = Fabric(accelerator=accelerator, devices=parse_devices(config.run.devices),
                        num_nodes=config.run.num_nodes, strategy=config.run.strategy, precision=precision)
        fabric.launch()
        fabric.seed_everything((config.run.seed + fabric.global_rank) % 2**32, workers=True, verbose=False)
        if resume is not None and fabric.global_rank == 0:  # refused before the model loads when another trains it
            run_lock = RunLock.acquire(run_dir)
            # a STOP file left from the stop being resumed would end this run after its first step
            (run_dir / STOP_FILE).unlink(missing_ok=True)
        samples = PreprocessedDataset(config.data.tensors_dir)
        plan = plan_run(config, samples.frames, fabric.world_size)  # no batch: raised before the model loads
        check_preview_sampling(config.run, samples.manifest.model.get("variant", ""))  # e.g. guidance on turbo
        checkpoints_dir = Path(config.model.checkpoints_dir) if config.model.checkpoints_dir else None
        if accelerator == "cuda" and not config.run.skip_vram_check:  # refuse a run that would not fit, before loading
            from acestep.gpu.fit import check_training_memory

            check_training_memory(config, fabric, checkpoints_dir)
        if config.run.compile:
            check_compile_support(accelerator)
        if config.run.cuda_graphs:
            check_cuda_graphs_support(accelerator)
        if config.model.quantization != "none":
            require_bitsandbytes()  # before minutes of loading
        bundle = load_transformer(config.model.checkpoint, config.model.quantization, model_dtype, fabric.device,
                                  compute_dtype(precision, model_dtype), checkpoints_dir)
        check_model_matches(samples.manifest, bundle.config.fingerprint,
                            encoder_digest(bundle.path), Path(config.data.tensors_dir), bundle.path)
        transformer = bundle.transformer
        attention = plan_attention(transformer, fabric.device, compute_dtype(precision, model_dtype))
        adapter = adapt_for_training(transformer, config, precision)
        train_indices, val_indices = list(plan.train_indices), list(plan.validation_indices)
        max_frames = crop_frames(config.data.max_seconds)
        train_set = CroppedSamples(samples, train_indices, max_frames, config.run.seed, repeats=config.data.repeats)
        validation_set = CroppedSamples(samples, val_indices, max_frames, config.run.seed, random_crop=False) \
            if val_indices else None
        batches, total = plan.batches_per_epoch, plan.total_steps
        o = config.optimizer
        optimizer = build_optimizer(adapter.parameters(), o.name, o.lr, o.weight_decay, tuple(o.betas), o.eps)
        scheduler = build_scheduler(optimizer, o.scheduler, o.warmup_steps, total, o.restarts)
        model, optimizer = fabric.setup(transformer, optimizer)
        if resume is None:  # only now: a run refused above leaves no empty run folder behind
            run_dir = new_run_dir(config) if fabric.global_rank == 0 else None
            run_lock = RunLock.acquire(run_dir) if run_dir is not None else None
            run_dir = Path(fabric.broadcast(str(run_dir) if run_dir else None, src=0))
        objective = Objective(config.objective.timestep_sampling,
                              _pick(config.objective.timestep_mu, bundle.config.timestep_mu),
                              _pick(config.objective.timestep_sigma, bundle.config.timestep_sigma),
                              config.objective.cfg_dropout, config.objective.min_snr_gamma)
        session = cls(config, fabric, run_dir, model, adapter, optimizer, scheduler, samples, train_set,
                      validation_set, train_indices, objective, bundle.silence_latent.to(fabric.device),
                      bundle.null_condition_emb.detach().to(fabric.device), model_dtype, batches, total,
                      {"checkpoint": str(bundle.path), "variant": bundle.variant,
                       "fingerprint": bundle.config.fingerprint, "trigger_tag": samples.manifest.trigger_tag},
                      resume_from, attention.describe())
        session.run_lock = run_lock
        if o.ema_decay is not None:
            session.average = AdapterAverage(list(adapter.parameters()), o.ema_decay)
        session._open_listeners(listeners)
        return session

    def _open_listeners(self, extra) -> None:
        if self.fabric.global_rank != 0:
            return
        if self.resume_from is None:
            save_config(self.config, self.run_dir / CONFIG_FILE)
        events = EventLog(self.run_dir)
        board = TensorBoardListener(self.run_dir)
        self.listeners = [events, board, *extra]
        self.closers = [events.close, board.close]

    def close(self) -> None:
        for close in self.closers:
            close()
        if self.run_lock is not None:
            self.run_lock.release()
        self._train_loader = None  # its worker processes end with it
        # Fabric starts the process group and leaves it to the interpreter's exit, where a finished
        # two-process CPU run once ended in std::terminate (exit status -6): end it here, after the
        # last collective, as PyTorch asks
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    # ---- what the loop uses --------------------------------------------------------------------------
    def epoch_batches(self, epoch: int, skip: int):
        """The batches this process trains in `epoch`, after the first `skip` (resume), from one
        loader for the whole run: its worker processes (data.num_workers) start once."""
        self.train_set.set_epoch(epoch)
        if self._train_loader is None:
            workers = self.config.data.num_workers
            self._train_loader = DataLoader(self.train_set, batch_sampler=self._epoch_sampler, collate_fn=collate,
                                            num_workers=workers, persistent_workers=workers > 0,
                                            pin_memory=self.fabric.device.type == "cuda")
        self._epoch_sampler.use(EpochBatches(self.train_set.frames(), self.config.data.batch_size,
                                             self.config.run.seed, epoch, self.config.data.group_by_length,
                                             self.fabric.global_rank, self.fabric.world_size, skip=skip,
                                             passes=self.train_set.repeats))
        return self._train_loader

    def use_train_set(self, train_set: CroppedSamples) -> None:
        """Train on `train_set` from the next epoch on (the benchmarks' timers take the samples in
        slices); the loader, built for the set it first served, is built again for this one."""
        self.train_set = train_set
        self._train_loader = None

    def step_generator(self, epoch: int, batch_index: int) -> torch.Generator:
        """The generator of one micro-batch's draws (CFG, timesteps, noise), and the global seed for
        adapter dropout: functions of (seed, rank, epoch, batch), so a resume draws the same."""
        seed = derived_seed(self.config.run.seed, self.fabric.global_rank, epoch, batch_index)
        torch.manual_seed(seed)
        return torch.Generator(device=self.fabric.device).manual_seed(seed)

    def batch_loss(self, batch, generator):
        return batch_loss(self.model, batch, self.objective, self.silence_latent, self.null_condition_emb,
                          generator, self.model_dtype)

    def averaged(self):
        """A context in which the adapter holds its moving average (optimizer.ema_decay), which is
        what the run hands out; without one, a context that changes nothing."""
        return self.average.swapped_in() if self.average is not None else nullcontext()

    def validation_loss(self) -> float:
        """The validation loss of the adapter the run hands out (its average, with optimizer.ema_decay)."""
        loader = DataLoader(self.validation_set, batch_size=self.config.data.batch_size, collate_fn=collate)
        self.model.eval()
        try:
            with self.fabric.autocast(), self.averaged():
                return validation_loss(self.model, loader, self.objective, self.silence_latent, self.model_dtype,
                                       self.config.data.validation_seed, self.fabric.device)
        finally:
            self.model.train()

    def save_adapter(self, folder: Path, progress) -> None:
        metadata = {**self.checkpoint_info, "adapter_type": self.adapter.kind, "rank": self.adapter.rank,
                    "alpha": self.adapter.alpha, "step": progress.step, "epoch": progress.epoch,
                    "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if self.config.model.quantization != "none":
            metadata["base_quantization"] = self.config.model.quantization
        if self.average is not None:
            metadata["ema_decay"] = self.average.decay  # the folder holds the average, not the last weights
        with self.averaged():
            save_adapter(self.adapter, folder, metadata)

    def start_message(self) -> str:
        trainable = sum(p.numel() for p in self.adapter.parameters())
        total = parameter_count(self.adapter.transformer)
        c = self.config
        effective = c.data.batch_size * c.optimizer.gradient_accumulation * self.fabric.world_size
        return (f"run {self.run_dir}; timesteps: {self.objective.describe()}; CFG dropout {self.objective.cfg_dropout} "
                f"with the learned null condition; adapter {self.adapter.kind} rank {self.adapter.rank} alpha "
                f"{self.adapter.alpha} on {len(self.adapter.modules)} modules: {trainable:,} trainable parameters "
                f"({100 * trainable / max(total, 1):.2f}% of {total:,}); effective batch {effective} "
                f"({c.data.batch_size} x {c.optimizer.gradient_accumulation} accumulation x {self.fabric.world_size} "
                f"process(es)); {self.batches_per_epoch} batches and "
                f"{optimizer_steps_per_epoch(self.batches_per_epoch, c.optimizer.gradient_accumulation)} optimizer "
                f"steps per epoch, {self.total_steps} steps in all; {self.attention}"
                + (f"; gradient checkpointing of {self.recomputed_layers()} of {len(self.adapter.transformer.layers)} "
                   "layers" if c.run.gradient_checkpointing else "")
                + (f"; frozen attention and MLP weights in {c.model.quantization.upper()} (bitsandbytes)"
                   if c.model.quantization != "none" else "")
                + (f"; adapters, validation and previews use the weights' moving average (decay "
                   f"{self.average.decay:g})" if self.average is not None else "")
                + ("; blocks compiled by torch.compile: the first steps, the first validation and the first "
                   "short batch wait while it compiles (its kernels are kept in "
                   f"{os.environ.get('TORCHINDUCTOR_CACHE_DIR', 'the temporary folder')} for later runs)"
                   if c.run.compile else "")
                + ("; their kernels replayed as CUDA graphs, recorded for each new batch shape" if c.run.cuda_graphs
                   else ""))

    def recomputed_layers(self) -> int:
        """How many of the transformer's blocks gradient checkpointing recomputes (acestep.training.recompute)."""
        return sum(getattr(block, RECOMPUTE_FLAG, False) for block in self.adapter.transformer.layers)

    def check_ranks_agree(self) -> None:
        """Under DDP every rank must end with the same adapter; a difference is a desync bug."""
        if self.fabric.world_size == 1:
            return
        checksum = torch.stack([p.detach().double().square().sum() for p in self.adapter.parameters()]).sum()
        gathered = self.fabric.all_gather(checksum.to(self.fabric.device))
        values = [float(v) for v in gathered.flatten()]
        if max(values) - min(values) > 1e-9 * max(1.0, abs(values[0])):
            raise TrainingError(f"The processes ended with different adapters (checksums {values}).")
        if self.fabric.global_rank == 0:
            from acestep.training.events import make_event

            for listener in self.listeners:
                listener(make_event("ranks", message=f"all {len(values)} processes hold the same adapter",
                                    checksums=values))


def _pick(value, default):
    return default if value is None else value


def load_run_config(path: Path, overrides: list[str]) -> TrainingConfig:
    """`--config run.toml` plus `--set` overrides (what the CLI and the UI jobs call)."""
    from acestep.training.config import apply_overrides

    return apply_overrides(load_config(path), overrides)
