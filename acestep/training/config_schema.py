"""The training config's schema: the dataclass tree, what each field does and allows, and the
the cross-field rules are in `acestep.training.config_rules`, the functions that load, check and save
it in `acestep.training.config`.

Each field's metadata holds `help` (what it does; the training guide is generated from it, see
`describe_fields`), its allowed values (`choices`, or bounds `ge`/`gt`/`le`/`lt`; `allowed` words
them where a rule below checks them), `required` (what an empty value lacks) and `path` (a
folder, made absolute by `resolve_paths`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

from acestep.dataset.values import BPM_MAX, BPM_MIN
from acestep.errors import ConfigError
from acestep.inference import GUIDANCE_METHODS
from acestep.training.config_values import FieldType, bounds_text, is_int, show

CONFIG_VERSION = 1
_SEED_MAX = 2**32 - 1  # numpy and Lightning's seed_everything accept 0 .. 2**32 - 1


def _option(default: Any, help: str, **rules: Any) -> Any:
    """A dataclass field with its help text and allowed values (see the module docstring)."""
    metadata = {"help": help, **rules}
    if isinstance(default, list):
        return field(default_factory=default.copy, metadata=metadata)
    return field(default=default, metadata=metadata)


QUANTIZATIONS = ("none", "nf4")  # model.quantization: how the frozen blocks are held (acestep.training.quantization)


@dataclass
class ModelConfig:
    """The base model to train and how its frozen weights are held."""

    checkpoint: str = _option(
        "acestep-v15-turbo", "The ACE-Step 1.5 DiT to train: a model folder, the name of a folder in the "
        "checkpoints directory (acestep-v15-turbo, acestep-v15-base, ...), or a Hugging Face id. The tensors "
        "must have been preprocessed with the same model.", required="the model to train")
    checkpoints_dir: str | None = _option(
        None, "Folder where model folders are found and downloaded to. Unset: $ACESTEP_CHECKPOINTS_DIR, "
        "else checkpoints/ in the project folder.", path=True)
    dtype: str = _option(
        "auto", "Dtype of the frozen base weights: auto (bf16 on CUDA, fp32 on CPU), bf16, fp16 or fp32. "
        "The adapter's own weights always train in fp32.", choices=("auto", "bf16", "fp16", "fp32"))
    quantization: str = _option(
        "none", "none, or nf4: hold the frozen attention and MLP weights in 4 bits (QLoRA, bitsandbytes), "
        "about a quarter of their memory in bf16, so the 4B XL models fit 8 GB cards (by the estimate). Each "
        "step is slower and the base the adapter learns on is slightly changed. LoRA and DoRA only; not with "
        "run.compile.", choices=QUANTIZATIONS)


@dataclass
class DataConfig:
    """The preprocessed samples and how they are batched."""

    tensors_dir: str = _option(
        "", "Required. The folder written by `acestep-trainer preprocess` (manifest.json and one "
        ".safetensors file per sample).", required="the folder written by `acestep-trainer preprocess`",
        path=True)
    batch_size: int = _option(
        1, "Samples per forward pass. More uses more VRAM; gradient_accumulation gives a larger "
        "effective batch without it.", ge=1)
    max_seconds: float | None = _option(
        60.0, "Each step trains on a random crop of at most this many seconds of each sample; "
        "\"none\" trains on whole samples. Shorter crops use less VRAM.", gt=0)
    repeats: int = _option(
        1, "Times each training sample is seen per epoch, each time with its own random crop (1: once). With "
        "few songs an epoch is a handful of steps; repeats make it longer, so the per-epoch saves, previews, "
        "validation and early stopping come less often. The steps per epoch grow by the same factor.", ge=1)
    group_by_length: bool = _option(
        True, "Batch samples of similar length together, so less padding is computed (padded frames "
        "never count in the loss).")
    validation_split: float = _option(
        0.0, "Share of the samples held out for validation (0: none). When set, the validation loss "
        "decides best/ and early stopping.", ge=0, le=0.5)
    validation_seed: int = _option(
        1234, "Seed of the choice of validation samples and of their fixed noise, apart from run.seed.",
        ge=0, le=_SEED_MAX)
    num_workers: int = _option(
        0, "Data-loader worker processes, started once for the whole run (0: load in the training process, "
        "the next batch while the GPU runs the backward pass; tensors are small).", ge=0)


@dataclass
class AdapterConfig:
    """The adapter trained on the transformer."""

    type: str = _option(
        "lora", "lora (PEFT LoRA), dora (PEFT DoRA: LoRA plus a learned magnitude per output) or lokr "
        "(LyCORIS LoKr).", choices=("lora", "dora", "lokr"))
    rank: int = _option(
        64, "Rank of the low-rank update: higher learns more detail and makes a larger file.", ge=1)
    alpha: float = _option(
        128.0, "The update is scaled by alpha / rank; alpha = 2 x rank is the usual choice.", gt=0)
    dropout: float = _option(
        0.1, "Dropout on the adapter's input during training (LoRA and DoRA; LoKr trains without it).", ge=0, lt=1)
    targets: str = _option(
        "attention", "Attention layers that get an adapter: self_attention, cross_attention (attends to "
        "the text and lyrics condition) or attention (both).",
        choices=("self_attention", "cross_attention", "attention"))
    mlp: bool = _option(
        False, "Also adapt the MLP projections (gate_proj, up_proj, down_proj) of every layer: more "
        "capacity, more memory.")
    modules: list[str] = _option(
        [], "Explicit module names to adapt (e.g. [\"q_proj\", \"v_proj\"]); when not empty they replace "
        "targets and mlp.")
    lokr_factor: int = _option(
        -1, "LoKr only: the Kronecker decomposition factor (-1: automatic, else at least 1).",
        allowed="-1 or at least 1")


@dataclass
class ObjectiveConfig:
    """What the model is trained to predict, and at which timesteps."""

    timestep_sampling: str = _option(
        "logit_normal", "logit_normal: the model's own pre-training distribution (sample_t_r: the larger of "
        "two draws of sigmoid(N(mu, sigma)), drawn in fp32). turbo_discrete: the 8-step shift-3 turbo "
        "table, for comparison only.", choices=("logit_normal", "turbo_discrete"))
    timestep_mu: float | None = _option(
        None, "Mean of the logit-normal timestep distribution; unset: the checkpoint's config (-0.4).")
    timestep_sigma: float | None = _option(
        None, "Standard deviation of the logit-normal timestep distribution; unset: the checkpoint's "
        "config (1.0).", gt=0)
    cfg_dropout: float = _option(
        0.15, "Probability that a sample's whole condition is replaced by the model's learned null "
        "condition, so classifier-free guidance keeps working with the adapter.", ge=0, le=1)
    min_snr_gamma: float | None = _option(
        None, "Min-SNR-gamma loss weighting (5 is typical); unset: off, every timestep weighs the same.",
        gt=0)


@dataclass
class OptimizerConfig:
    """The optimizer and the learning-rate schedule."""

    name: str = _option(
        "adamw", "adamw; adamw8bit (bitsandbytes, less optimizer memory); adafactor (least memory); "
        "prodigy (estimates the step size itself: keep lr near 1.0).",
        choices=("adamw", "adamw8bit", "adafactor", "prodigy"))
    lr: float = _option(
        1e-4, "Peak learning rate. With prodigy it multiplies Prodigy's own estimate and must be from "
        "0.1 to 10 (1.0 is usual).", gt=0, allowed="more than 0; from 0.1 to 10 with prodigy")
    weight_decay: float = _option(0.01, "Decoupled weight decay on the adapter weights.", ge=0)
    betas: list[float] = _option(
        [0.9, 0.999], "The optimizer's [beta1, beta2] (moving-average factors of Adam-style optimizers), "
        "each at least 0 and less than 1.", allowed="two numbers, each at least 0 and less than 1")
    eps: float = _option(1e-8, "Epsilon added to the optimizer's denominator for numerical stability.", gt=0)
    grad_clip: float | None = _option(
        1.0, "Clip the gradient norm to this value; \"none\": no clipping.", gt=0)
    scheduler: str = _option(
        "cosine", "Learning-rate schedule: cosine (warmup, then cosine decay to 0), cosine_with_restarts "
        "(`restarts` cosine cycles), linear (warmup, then linear decay to 0), constant (lr throughout, no "
        "warmup), constant_with_warmup (warmup, then lr).",
        choices=("cosine", "cosine_with_restarts", "linear", "constant", "constant_with_warmup"))
    warmup_steps: int = _option(
        100, "Optimizer steps of linear warmup from 0 to lr; the run warns at its start when they are "
        "not below its total optimizer steps (the learning rate would never reach lr).", ge=0)
    restarts: int = _option(1, "Cosine cycles of cosine_with_restarts.", ge=1)
    gradient_accumulation: int = _option(
        1, "Batches whose gradients are summed before each optimizer step; effective batch = "
        "batch_size x gradient_accumulation x GPUs.", ge=1)
    ema_decay: float | None = _option(
        None, "Keep an exponential moving average (EMA) of the adapter weights with this decay, e.g. 0.999 "
        "(an average over about the last 1 / (1 - decay) steps, after a warm-up of about 10 / (1 - decay) "
        "steps); the run's adapters (checkpoints, best/, final/), its validation loss and its previews then "
        "use the average, while the weights train as before. \"none\": no average.", gt=0, lt=1)


@dataclass
class RunConfig:
    """Where the run goes, how long it runs, on what hardware, and when it saves."""

    output_dir: str = _option(
        "runs", "Parent folder of run folders: a run is written to <output_dir>/<name>/.",
        required="the parent folder of run folders", path=True)
    name: str = _option(
        "", "Run folder name; empty: the start date-time and the adapter type. No / \\ : * ? \" < > |.")
    epochs: int = _option(10, "Passes over the training samples.", ge=1)
    max_steps: int | None = _option(
        None, "Stop after this many optimizer steps even before the last epoch; unset: no cap.", ge=1)
    seed: int = _option(
        42, "Seed of every random number generator of training: data order, crops, noise, timesteps, "
        "dropout.", ge=0, le=_SEED_MAX)
    precision: str = _option(
        "auto", "auto (bf16-mixed on CUDA GPUs with bf16 in hardware, 16-mixed on older CUDA GPUs, 32-true on CPU), "
        "bf16-mixed, 16-mixed or 32-true.", choices=("auto", "bf16-mixed", "16-mixed", "32-true"))
    accelerator: str = _option("auto", "auto, cuda, cpu or mps.", choices=("auto", "cuda", "cpu", "mps"))
    devices: int | str = _option(
        1, "A number of devices (2), the GPUs to use as a comma list in quotes (\"0,1\"; \"1\" is GPU 1 "
        "alone), or \"auto\" (all).", allowed='at least 1, "auto", or GPU indices such as "0,1"')
    num_nodes: int = _option(1, "Machines taking part in the run (multi-node DDP).", ge=1)
    strategy: str = _option(
        "auto", "auto (DDP when there are several devices) or ddp.", choices=("auto", "ddp"))
    gradient_checkpointing: bool = _option(
        False, "Recompute activations during the backward pass: much less VRAM, slower steps.")
    gradient_checkpointing_ratio: float = _option(
        1.0, "With gradient_checkpointing on, the share of the transformer's layers checkpointed, from the "
        "first (1: all). Below 1 the other layers keep their activations: faster steps for more VRAM (the "
        "estimate counts it).", gt=0, le=1)
    compile: bool = _option(
        False, "torch.compile each transformer block, for shapes that change from batch to batch: fewer, fused "
               "kernels (1.9x faster steps at batch 1 x 60 s on an H200), after a few minutes of compiling at the "
               "start (kept in cache/torch-compile for later runs); previews run uncompiled.")
    cuda_graphs: bool = _option(
        False, "With run.compile on a CUDA GPU: replay each compiled block's kernels as CUDA graphs (torch.compile's "
               "reduce-overhead mode) instead of launching them one by one, for steps the CPU holds back. In the "
               "benchmark on an H200, blocks compiled this way for fixed shapes took 50 ms a step at batch 1 x 60 s "
               "(108 ms compiled alone, 201 ms eager) and 108 ms at batch 8 (172 ms compiled alone); the trainer's "
               "form, for shapes that change, is not measured on a GPU yet. A graph is recorded for each new batch "
               "shape, in memory the VRAM estimate does not count. Not with run.gradient_checkpointing, nor with "
               "optimizer.gradient_accumulation above 1.")
    skip_vram_check: bool = _option(
        False, "Start on a CUDA GPU even when the estimated peak memory is above the GPU's free memory. The "
        "check (CUDA only) stops such a run before the model loads, naming the shortfall, the processes holding "
        "memory and settings that would fit; `acestep-trainer gpu --config` shows the estimate.")
    log_every_steps: int = _option(
        10, "Log loss, lr and VRAM every this many optimizer steps (the loop's only GPU sync).", ge=1)
    save_every_epochs: int = _option(
        1, "Save a resumable checkpoint every this many epochs; 0: off.", ge=0)
    save_every_steps: int = _option(
        0, "Save a resumable checkpoint every this many optimizer steps; 0: off.", ge=0)
    save_every_minutes: float = _option(
        30.0, "Save a resumable checkpoint when this many minutes have passed since the last save (of any "
        "kind), so that a crash or a power cut loses at most that much training; 0: off.", ge=0)
    keep_checkpoints: int = _option(
        3, "Step checkpoints kept; older ones are deleted (best/ and final/ are always kept).", ge=1)
    early_stopping_patience: int = _option(
        0, "Stop after this many epochs without improvement of the 5-epoch moving average of the loss "
        "(of the validation loss when there is a validation split); 0: off.", ge=0)
    early_stopping_min_delta: float = _option(
        0.0, "Smallest decrease of that moving average that counts as an improvement.", ge=0)
    best_after_epochs: int = _option(
        1, "best/ (the adapter at the lowest loss) is saved only from this epoch on, once the loss has "
        "settled; at most run.epochs.", ge=1)
    nan_patience: int = _option(
        5, "Non-finite losses in a row (each such step is skipped) before training halts.", ge=1)
    preview_every_epochs: int = _option(
        0, "Render audio previews every this many epochs, on the main process: a wav and a spectrogram "
        "PNG per strength in <run>/previews/step-N/, listed in events.jsonl; 0: off. Previews leave the "
        "training bit-identical.", ge=0)
    preview_every_steps: int = _option(
        0, "Render audio previews every this many optimizer steps; 0: off.", ge=0)
    preview_caption: str = _option(
        "", "The caption previews are rendered from (include the trigger tag); required when previews "
        "are on.", allowed="any text; not empty when previews are on")
    preview_lyrics: str = _option(
        "", "Lyrics of the previews; empty: an instrumental preview.")
    preview_language: str = _option(
        "en", "Language code of the preview lyrics, as the dataset uses them (en, zh, ja, ..., unknown).",
        allowed="a language code ACE-Step knows (en, zh, ja, ..., unknown)")
    preview_bpm: float | None = _option(
        None, "Tempo written into the previews' prompt, as the dataset's bpm is; unset: none (N/A).",
        gt=int(BPM_MIN), lt=int(BPM_MAX))  # the dataset's tempo range (acestep.dataset.values.check_bpm)
    preview_key: str = _option(
        "", "Key and scale written into the previews' prompt, e.g. \"A minor\" (\"Am\" is written as the dataset "
        "writes it: \"A minor\"); empty: none (N/A).")
    preview_time_signature: str = _option(
        "", "Time signature written into the previews' prompt as beats per bar, e.g. 4 (\"4/4\" is written 4, as "
        "the dataset writes it); empty: none (N/A).")
    preview_seconds: float = _option(
        10.0, "Length of each preview in seconds (a VAE hop of 1920 samples at most is added).", gt=0, le=600)
    preview_seed: int = _option(
        0, "Seed of the previews' noise: the same at every preview, so previews of different steps compare.",
        ge=0, le=_SEED_MAX)
    preview_steps: int | None = _option(
        None, "Sampling steps of the previews; unset: the model's default (turbo 8, base/sft 50). Fewer steps "
        "render base/sft previews faster; a turbo model samples exactly 8 (a run on one refuses others at its "
        "start).", ge=1)
    preview_shift: float | None = _option(
        None, "Timestep shift of the previews' schedule; unset: the model's default (turbo 3, base/sft 1). A turbo "
        "model takes 1, 2 or 3 only (a run on one refuses others at its start).", gt=0)
    preview_guidance_scale: float | None = _option(
        None, "Guidance scale of the previews on a base/sft model; unset: its default (7; at most 1: no guidance). "
        "A turbo model samples without guidance: a run on one refuses a value above 1 at its start.", ge=0)
    preview_guidance: str = _option(
        "apg", "Guidance method of the previews on a base/sft model: apg (upstream's default) or cfg (plain "
        "classifier-free guidance).", choices=GUIDANCE_METHODS)
    preview_strengths: list[float] = _option(
        [0.0, 1.0], "Adapter strengths rendered at each preview, from the same noise: 0 is the base model, "
        "1 the adapter as trained.", allowed="one or more distinct numbers from 0 to 2")


@dataclass
class TrainingConfig:
    """Everything a training run needs; `version` is the config format's version."""

    version: int = CONFIG_VERSION
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    run: RunConfig = field(default_factory=RunConfig)


SECTIONS: dict[str, type] = {
    "model": ModelConfig, "data": DataConfig, "adapter": AdapterConfig,
    "objective": ObjectiveConfig, "optimizer": OptimizerConfig, "run": RunConfig,
}


FIELD_TYPES: dict[str, FieldType] = {
    f"{section}.{f.name}": FieldType.from_annotation(f.type) for section, cls in SECTIONS.items() for f in fields(cls)
}
FIELD_META: dict[str, Any] = {
    f"{section}.{f.name}": f.metadata for section, cls in SECTIONS.items() for f in fields(cls)
}


def parse_devices(devices: int | str) -> int | str | list[int]:
    """run.devices as Lightning takes it: a count (2), "auto", or a list of GPU indices ("0,1" ->
    [0, 1]; "1" -> [1], GPU 1 alone). Raises ConfigError naming run.devices otherwise."""
    if is_int(devices) and devices >= 1:
        return devices
    if isinstance(devices, str):
        text = devices.strip()
        if text.casefold() == "auto":
            return "auto"
        parts = [part.strip() for part in text.split(",") if part.strip()]
        if parts and all(part.isdecimal() for part in parts):
            indices = [int(part) for part in parts]
            if len(set(indices)) == len(indices):
                return indices
    raise ConfigError(f"run.devices must be a number of devices (at least 1), \"auto\", or the GPU indices "
                      f"as a comma list such as \"0,1\" (each once), found {show(devices)}")


class FieldDoc(NamedTuple):
    """One config field as the training guide and the UI show it."""

    path: str  # "optimizer.lr"
    type: str  # "float", "int | None", ...
    default: Any
    help: str
    allowed: str  # "more than 0", "one of: adamw, ...", or ""


def describe_fields() -> list[FieldDoc]:
    """Every config field in file order, with its type, default, help and allowed values."""
    defaults = dataclasses.asdict(TrainingConfig())
    docs = []
    for path, ftype in FIELD_TYPES.items():
        section, name = path.split(".")
        meta = FIELD_META[path]
        allowed = meta.get("allowed") or ("required" if "required" in meta else bounds_text(meta))
        if "choices" in meta:
            allowed = f"one of: {', '.join(meta['choices'])}"
        docs.append(FieldDoc(path, str(ftype), defaults[section][name], meta["help"], allowed))
    return docs
