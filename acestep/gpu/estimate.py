"""Peak GPU memory of a training run, from its config and the model's config.

    estimate = estimate_vram(config)            # the 2B DiT; pass the checkpoint's AceStepModelConfig for XL
    estimate.total_bytes, estimate.parts, print(estimate.describe())

The parts, in bytes (training loads the transformer alone: `components=("transformer",)`):
- weights: the frozen transformer at its dtype (bf16 on CUDA by default), counted from the
  module shapes (built on the meta device, no memory used); with model.quantization=nf4 the
  blocks' Linear weights at NF4's bytes (`acestep.training.quantization.nf4_bytes`);
- adapter, gradients: the trainable parameters in fp32, counted exactly by attaching the real
  adapter (PEFT LoRA/DoRA, LyCORIS LoKr) to that meta transformer; with optimizer.ema_decay the
  adapter twice (the weights and their moving average, `acestep.training.averaging`);
- optimizer: its state, exactly as each library allocates it (AdamW: two fp32 buffers and a step
  scalar per tensor; 8-bit AdamW: two uint8 buffers plus an fp32 scale per 256 values for tensors
  of 4096+ values, fp32 buffers below; Adafactor: fp32 row and column factors of each matrix and an RMS scalar;
  Prodigy: four fp32 buffers, the initial copy being a scalar for tensors that start at zero);
- autocast copies: bf16 copies of the adapter weights autocast keeps during the forward pass;
- activations: what the forward pass keeps for the backward pass (`acestep.gpu.activations`);
- workspace: temporaries of the largest backward op, the batch on the device, cuBLAS (and with
  NF4, the largest layer's weight dequantized for its product);
- allocator: memory the caching allocator holds but has not handed out (fragmentation);
- CUDA context: the driver context, kernels and libraries of the process (not seen by PyTorch).
`allocated_bytes` (the first seven) is what `torch.cuda.max_memory_allocated` reports; the GPU
check (benchmarks/gpu_presets.py) compares the two and can refit `EstimateTuning`.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import math
from dataclasses import dataclass, field, replace

from acestep.gpu.activations import (
    CPU_KERNELS,
    AdapterShape,
    KernelProfile,
    ModelShape,
    activation_bytes,
    checkpointed_layers,
    cuda_kernels,
)

GIB = 1024 ** 3
FRAMES_PER_SECOND = 25
ENCODER_TOKENS = 512  # condition tokens of a typical song: lyrics + caption + timbre reference
WHOLE_SAMPLE_SECONDS = 240.0  # data.max_seconds unset: whole samples, which preprocessing caps at 240 s
ZERO_INIT_NAMES = ("lora_B", "lokr_w2", "lokr_w2_b")  # parameters their libraries initialise to zero

# The 2B ACE-Step 1.5 DiT (turbo, base and sft share it): config.json of the official checkpoints.
ACESTEP_2B_DIT_CONFIG = {
    "model_type": "acestep", "model_version": "turbo", "is_turbo": True, "hidden_size": 2048,
    "intermediate_size": 6144, "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 8,
    "head_dim": 128, "rms_norm_eps": 1e-6, "rope_theta": 1_000_000, "attention_bias": False,
    "attention_dropout": 0.0, "use_sliding_window": True, "sliding_window": 128,
    "layer_types": ["sliding_attention", "full_attention"] * 12, "in_channels": 192,
    "audio_acoustic_hidden_dim": 64, "patch_size": 2, "text_hidden_dim": 1024, "timbre_hidden_dim": 64,
    "timbre_fix_frame": 750, "num_lyric_encoder_hidden_layers": 8, "num_timbre_encoder_hidden_layers": 4,
    "num_attention_pooler_hidden_layers": 2, "num_audio_decoder_hidden_layers": 24, "pool_window_size": 5,
    "fsq_dim": 2048, "fsq_input_levels": [8, 8, 8, 5, 5, 5], "fsq_input_num_quantizers": 1,
    "timestep_mu": -0.4, "timestep_sigma": 1.0, "data_proportion": 0.5, "vocab_size": 64003,
}

# The 4B XL DiTs: the 2B config with the XL widths (reference/acestep-model.md 1.3); the condition
# encoder keeps the 2B widths and the condition embedder maps them to the decoder's.
ACESTEP_XL_DIT_CONFIG = {
    **ACESTEP_2B_DIT_CONFIG, "model_version": "xl-turbo", "hidden_size": 2560, "intermediate_size": 9728,
    "num_hidden_layers": 32, "num_attention_heads": 32, "layer_types": ["sliding_attention", "full_attention"] * 16,
    "encoder_hidden_size": 2048, "encoder_intermediate_size": 6144,
    "encoder_num_attention_heads": 16, "encoder_num_key_value_heads": 8,
}


@dataclass(frozen=True)
class EstimateTuning:
    """The constants measured on GPUs (benchmarks/gpu_presets.py --refit prints new values).

    `activation_scale` and `workspace_scale` multiply the counted activations and workspace;
    `allocator_fraction` is the caching allocator's reserve over what it hands out;
    `cuda_context_bytes` the CUDA context, kernels and cuBLAS/cuDNN handles of a process, which
    PyTorch does not count (0.3-0.6 GiB on current drivers with lazy kernel loading)."""

    activation_scale: float = 1.0
    workspace_scale: float = 1.0
    allocator_fraction: float = 0.05
    cuda_context_bytes: int = int(0.5 * GIB)


DEFAULT_TUNING = EstimateTuning()
PART_NAMES = ("weights", "adapter", "gradients", "optimizer", "autocast copies", "activations", "workspace",
              "allocator", "CUDA context")
_NOT_ALLOCATED = ("allocator", "CUDA context")


@dataclass(frozen=True)
class VramEstimate:
    """Peak GPU memory of a run, by part (bytes; see the module docstring)."""

    parts: dict[str, int]
    frozen_params: int
    trainable_params: int
    summary: str  # the settings the estimate is for, in words
    config: object = field(repr=False, compare=False, default=None)  # the TrainingConfig estimated
    model_config: object = field(repr=False, compare=False, default=None)
    options: dict = field(repr=False, compare=False, default_factory=dict)  # estimate_vram's keyword arguments

    @property
    def total_bytes(self) -> int:
        return sum(self.parts.values())

    @property
    def allocated_bytes(self) -> int:
        """What PyTorch hands out at the peak (`torch.cuda.max_memory_allocated`)."""
        return sum(v for k, v in self.parts.items() if k not in _NOT_ALLOCATED)

    @property
    def checkpoint_sizes(self):
        """What a step checkpoint and an adapter folder of the run weigh on disk
        (`acestep.training.disk_space.CheckpointSizes`): a checkpoint's adapter folder holds the
        adapter (fp32; with a moving average, the average) and its training state the optimizer's
        state (and, with a moving average, the weights): the adapter and the optimizer as counted
        here (`acestep.training.loop.Trainer.training_state`)."""
        from acestep.training.disk_space import CheckpointSizes

        return CheckpointSizes(self.parts["adapter"] + self.parts["optimizer"], 4 * self.trainable_params)

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB

    def describe(self) -> str:
        """The estimate as text: the total, then one line per part."""
        lines = [f"Estimated peak GPU memory: {gib(self.total_bytes)} ({self.summary})"]
        notes = {"weights": f"{self.frozen_params:,} frozen parameters",
                 "adapter": f"{self.trainable_params:,} trainable parameters, fp32"
                            + (", and their moving average" if self.config.optimizer.ema_decay is not None else "")}
        for name, value in self.parts.items():
            note = f"  ({notes[name]})" if name in notes else ""
            lines.append(f"  {name:16s}{gib(value):>10s}{note}")
        return "\n".join(lines)


def gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.2f} GiB"


def default_model_config():
    """The 2B DiT's config (`ACESTEP_2B_DIT_CONFIG`) as an `AceStepModelConfig`."""
    from acestep.models.config import parse_model_config

    return parse_model_config(dict(ACESTEP_2B_DIT_CONFIG))


def estimate_vram(config, model_config=None, *, accelerator: str = "cuda", encoder_tokens: int = ENCODER_TOKENS,
                  world_size: int = 1, kernels: KernelProfile | None = None,
                  capability: tuple[int, int] | None = None, tuning: EstimateTuning = DEFAULT_TUNING) -> VramEstimate:
    """Peak GPU memory of training with `config` (a `TrainingConfig`) on `model_config`.

    `model_config` (an `AceStepModelConfig`; None: the 2B DiT) gives the module shapes.
    `accelerator` and the GPU's compute `capability` (None: unknown, counted as the worst case)
    resolve precision and dtype "auto" as the trainer does (cuda: bf16-mixed with bf16 weights,
    16-mixed with fp16 before compute 8.0; cpu, mps: fp32) and the kernels' behaviour (`kernels`
    overrides it);
    `encoder_tokens` is the condition length per sample; `world_size` > 1 adds DDP's gradient
    buckets. The crop is data.max_seconds (unset: 240 s). No CUDA context is counted off a GPU.
    Raises TrainingError when the adapter settings match no module.
    """
    model_config = model_config or default_model_config()
    mixed, weight_bytes, bf16 = _precision(config, accelerator, capability)
    inventory = _inventory(_model_key(model_config), config.adapter.type, config.adapter.rank, config.adapter.alpha,
                           config.adapter.targets, config.adapter.mlp, tuple(config.adapter.modules),
                           config.adapter.lokr_factor)
    shape = ModelShape.from_config(model_config)
    adapter = AdapterShape.from_module_names(config.adapter.type, config.adapter.rank, config.adapter.dropout,
                                             list(inventory.modules), shape.layers)
    seconds = config.data.max_seconds or WHOLE_SAMPLE_SECONDS
    frames = round(seconds * FRAMES_PER_SECOND)
    kernels = kernels or (cuda_kernels(capability, bf16) if accelerator == "cuda" else CPU_KERNELS)
    activations = activation_bytes(shape, adapter, batch=config.data.batch_size, frames=frames,
                                   encoder_tokens=encoder_tokens, mixed=mixed,
                                   checkpointing=config.run.gradient_checkpointing,
                                   checkpoint_ratio=config.run.gradient_checkpointing_ratio,
                                   compiled=config.run.compile, kernels=kernels)
    trainable = sum(math.prod(s) for _, s in inventory.trainable)
    weights, dequantized = inventory.frozen_numel * weight_bytes, 0
    if config.model.quantization == "nf4":
        from acestep.training.quantization import nf4_bytes

        quantized = sum(inventory.quantizable)
        weights += sum(nf4_bytes(n) for n in inventory.quantizable) - quantized * weight_bytes
        dequantized = max(inventory.quantizable) * (2 if mixed else weight_bytes)  # one layer's weight at a time
    parts = {
        "weights": weights,
        "adapter": trainable * 4 * (2 if config.optimizer.ema_decay is not None else 1),
        "gradients": trainable * 4 * (2 if world_size > 1 else 1),
        "optimizer": optimizer_state_bytes(config.optimizer.name, inventory.trainable, config.optimizer.betas),
        "autocast copies": trainable * 2 if mixed else 0,
        "activations": round(activations.saved * tuning.activation_scale),
        "workspace": round(activations.workspace * tuning.workspace_scale) + dequantized,
    }
    parts["allocator"] = round(sum(parts.values()) * tuning.allocator_fraction) if accelerator == "cuda" else 0
    parts["CUDA context"] = tuning.cuda_context_bytes if accelerator == "cuda" else 0
    summary = (f"{config.adapter.type} rank {config.adapter.rank}, {config.optimizer.name}, batch "
               f"{config.data.batch_size} x {seconds:g} s ({frames} frames), {encoder_tokens} condition tokens, "
               f"gradient checkpointing {_checkpointing(config, shape.layers)}"
               + (", compiled" if config.run.compile else "") + f", {'mixed precision' if mixed else 'fp32'}"
               + (", NF4 base" if config.model.quantization == "nf4" else ""))
    options = {"accelerator": accelerator, "encoder_tokens": encoder_tokens, "world_size": world_size,
               "kernels": kernels, "tuning": tuning}
    return VramEstimate(parts, inventory.frozen_numel, trainable, summary, config, model_config, options)


def _checkpointing(config, layers: int) -> str:
    """"off", "on", or "on for N of M layers" (run.gradient_checkpointing_ratio below 1)."""
    if not config.run.gradient_checkpointing:
        return "off"
    count = checkpointed_layers(layers, config.run.gradient_checkpointing_ratio)
    return "on" if count == layers else f"on for {count} of {layers} layers"


def re_estimate(estimate: VramEstimate, config) -> VramEstimate:
    """The estimate of another config on the same model, with the same options."""
    return estimate_vram(config, estimate.model_config, **estimate.options)


def optimizer_state_bytes(name: str, params, betas=(0.9, 0.999)) -> int:
    """Bytes of optimizer state for `params`, a sequence of (name, shape), as `build_optimizer`'s
    optimizers allocate it at their first step (see the module docstring)."""
    total = 0
    eight_bit = False
    for param_name, shape in params:
        n = math.prod(shape)
        if name == "adamw":
            total += 8 * n + 4  # exp_avg, exp_avg_sq, and the step as an fp32 scalar tensor
        elif name == "adamw8bit":
            if n >= 4096:  # bitsandbytes' min_8bit_size; blockwise quantisation in blocks of 256
                total += 2 * n + 2 * 4 * math.ceil(n / 256)
                eight_bit = True
            else:
                total += 8 * n
        elif name == "adafactor":
            factored = math.prod(shape[:-1]) + math.prod(shape[:-2]) * shape[-1] if len(shape) >= 2 else n
            total += 4 * factored + 4  # and the parameter's RMS, kept as an fp32 scalar tensor
        elif name == "prodigy":
            zero = any(part in param_name.split(".") for part in ZERO_INIT_NAMES)
            total += 4 * (n + (1 if zero else n) + n + (n if betas[0] > 0 else 0))  # s, p0, exp_avg_sq, exp_avg
        else:
            raise ValueError(f"unknown optimizer {name!r}")
    if eight_bit:
        total += 2 * 256 * 4  # the signed and unsigned quantisation maps, shared by every tensor
    return total


def _precision(config, accelerator: str, capability: tuple[int, int] | None = None) -> tuple[bool, int, bool]:
    """(mixed precision?, bytes per frozen weight, computes in bf16?) as `session.resolve_precision`
    resolves them on a CUDA GPU of compute `capability` (None: unknown, taken as one with bf16)."""
    cuda = accelerator == "cuda"
    precision = config.run.precision
    if precision == "auto":
        bf16_in_hardware = capability is None or tuple(capability) >= (8, 0)
        precision = ("bf16-mixed" if bf16_in_hardware else "16-mixed") if cuda else "32-true"
    dtype = config.model.dtype
    if dtype == "auto":
        dtype = {"bf16-mixed": "bf16", "16-mixed": "fp16"}.get(precision, "fp32") if cuda else "fp32"
    bf16 = precision == "bf16-mixed" or (precision not in ("bf16-mixed", "16-mixed") and dtype == "bf16")
    return precision in ("bf16-mixed", "16-mixed"), 4 if dtype == "fp32" else 2, bf16


def _model_key(model_config) -> str:
    return json.dumps(model_config.transformer_kwargs(), sort_keys=True)


@dataclass(frozen=True)
class _Inventory:
    frozen_numel: int
    trainable: tuple[tuple[str, tuple[int, ...]], ...]
    modules: tuple[str, ...]
    quantizable: tuple[int, ...]  # weight sizes of the Linear layers model.quantization replaces


@functools.lru_cache(maxsize=64)
def _inventory(model_key: str, kind: str, rank: int, alpha: float, targets: str, mlp: bool,
               modules: tuple[str, ...], lokr_factor: int) -> _Inventory:
    """The transformer's frozen parameter count and the adapter's parameters, from the meta
    transformer with the real adapter attached (a second or so; cached per model and adapter)."""
    from diffusers import AceStepTransformer1DModel

    from acestep.models.weights import empty_weights
    from acestep.training.adapters import add_adapter
    from acestep.training.quantization import quantizable_linears

    with empty_weights():
        transformer = AceStepTransformer1DModel(**json.loads(model_key))
    quantizable = tuple(transformer.get_submodule(name).weight.numel() for name in quantizable_linears(transformer))
    lycoris = logging.getLogger("LyCORIS")
    level = lycoris.level
    lycoris.setLevel(logging.ERROR)  # LyCORIS warns about rank and dropout on every module
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            adapter = add_adapter(transformer, kind, rank, alpha, 0.0, targets, mlp, list(modules) or None,
                                  lokr_factor)
    finally:
        lycoris.setLevel(level)
    named = adapter.network.named_parameters() if adapter.network is not None else transformer.named_parameters()
    trainable = tuple((name, tuple(p.shape)) for name, p in named if p.requires_grad)
    frozen = sum(p.numel() for p in transformer.parameters() if not p.requires_grad)
    frozen += sum(b.numel() for b in transformer.buffers())
    return _Inventory(frozen, trainable, tuple(adapter.modules), quantizable)


def vary(config, **changes):
    """A copy of `config` with "section.field" changes (keyword names use "__" for the dot)."""
    sections = {}
    for key, value in changes.items():
        section, name = key.split("__")
        sections.setdefault(section, {})[name] = value
    return replace(config, **{s: replace(getattr(config, s), **v) for s, v in sections.items()})
