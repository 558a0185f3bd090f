"""What the benchmark scripts share: model sizes, a transformer with random weights built from a
config (nothing downloaded), synthetic tensors folders, a `TrainingSession` assembled from a
`TrainingConfig` with the trainer's own parts (adapter, optimizer, scheduler, Fabric, data), the
real configs of the VAE and the text encoder, and what a result file records about the machine."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from acestep.gpu.estimate import ACESTEP_2B_DIT_CONFIG, ACESTEP_XL_DIT_CONFIG
from acestep.models.attention import plan_attention
from acestep.models.config import AceStepModelConfig
from acestep.models.load import build_component
from acestep.models.tiny import TINY_DIT_CONFIG
from acestep.preprocess.manifest import Manifest, ManifestSample, write_manifest
from acestep.preprocess.tensors import PreprocessedDataset, write_sample
from acestep.training.config import TrainingConfig
from acestep.training.data import CroppedSamples
from acestep.training.optim import build_optimizer, build_scheduler
from acestep.training.compilation import check_cuda_graphs_support
from acestep.training.quantization import quantize_transformer
from acestep.training.plan import FRAMES_PER_SECOND
from acestep.training.session import (TrainingSession, adapt_for_training, compute_dtype, resolve_accelerator,
                                      resolve_precision)
from acestep.training.step import Objective

SIZES = {
    "tiny": dict(TINY_DIT_CONFIG),
    "small": {**TINY_DIT_CONFIG, "hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 4,
              "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 64, "sliding_window": 128},
    "2b": dict(ACESTEP_2B_DIT_CONFIG),
    "xl": dict(ACESTEP_XL_DIT_CONFIG),
}
CONDITION_TOKENS = 400  # lyrics + timbre + caption tokens of a typical song


def varied_condition_lengths(count: int, seed: int = 0) -> list[int]:
    """`count` condition lengths drawn uniformly from 300 to 500 tokens (CONDITION_TOKENS +- 25%), as
    songs' lyrics and captions differ: consecutive batches of a benchmark then differ in shape as a
    real run's do."""
    generator = torch.Generator().manual_seed(seed)
    low, high = CONDITION_TOKENS * 3 // 4, CONDITION_TOKENS * 5 // 4
    return torch.randint(low, high + 1, (count,), generator=generator).tolist()

# The ACE-Step 1.5 VAE (`vae/config.json`: diffusers' AutoencoderOobleck at 48 kHz, hop 1920) and the
# Qwen3-Embedding-0.6B text encoder, from shared/reference/acestep-model.md section 1.4; their
# parameter counts match the published file sizes (tests/test_benchmarks.py checks it).
VAE_48K_CONFIG = {"encoder_hidden_size": 128, "downsampling_ratios": [2, 4, 4, 6, 10],
                  "channel_multiples": [1, 2, 4, 8, 16], "decoder_channels": 128, "decoder_input_channels": 64,
                  "audio_channels": 2, "sampling_rate": 48_000}
QWEN3_EMBEDDING_CONFIG = {"vocab_size": 151_669, "hidden_size": 1024, "intermediate_size": 3072,
                          "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
                          "head_dim": 128, "max_position_embeddings": 32768, "rope_theta": 1_000_000.0,
                          "rms_norm_eps": 1e-6, "tie_word_embeddings": True}
OOM_MARKERS = ("OutOfMemoryError", "CUDA out of memory", "CUDA error: out of memory")


def model_config(size: str) -> dict:
    """The DiT config.json of a benchmark size, with one layer type per layer."""
    config = dict(SIZES[size])
    config["layer_types"] = (list(config["layer_types"]) * config["num_hidden_layers"])[: config["num_hidden_layers"]]
    return config


def random_transformer(config: AceStepModelConfig, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The transformer of `config` with N(0, 0.02) weights made directly in `dtype` on `device`
    (no full-precision copy on the way, so a GPU's peak memory counts only the model)."""
    transformer = build_component(config, "transformer")
    torch.nn.Module.to(transformer, dtype)  # on the meta device; ModelMixin.to would warn about fp32 modules
    transformer = transformer.to_empty(device=device)
    with torch.no_grad():
        for param in transformer.parameters():
            param.normal_(0.0, 0.02)
    return transformer


def write_samples(folder: Path, count: int, frames: int, width: int, tokens: int | Sequence[int] = CONDITION_TOKENS,
                  seed: int = 0) -> PreprocessedDataset:
    """A tensors folder of `count` random samples of `frames` latent frames and `tokens` condition tokens
    (a number, or one per sample), in the dtypes preprocessing on a GPU writes (fp32 latents, bf16
    conditions)."""
    lengths = [tokens] * count if isinstance(tokens, int) else list(tokens)
    if len(lengths) != count:
        raise ValueError(f"{len(lengths)} condition lengths for {count} samples")
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    manifest = Manifest(model={}, settings={})
    for i, length in enumerate(lengths):
        name = f"s{i}.safetensors"
        write_sample(folder, name, {"target_latents": torch.randn(frames, 64, generator=generator),
                                    "encoder_hidden_states": torch.randn(length, width, generator=generator).bfloat16(),
                                    "encoder_attention_mask": torch.ones(length, dtype=torch.bool)}, {})
        manifest.samples.append(ManifestSample(f"s{i}", f"{i}.wav", name, frames, frames / FRAMES_PER_SECOND, "", ""))
    write_manifest(folder, manifest)
    return PreprocessedDataset(folder)


def build_session(training: TrainingConfig, model: AceStepModelConfig, samples: PreprocessedDataset,
                  work: Path, seed: int = 0) -> TrainingSession:
    """A TrainingSession as `TrainingSession.start` builds one, on a random-weight transformer:
    Fabric (accelerator and precision from `training`), the NF4 base when asked, gradient
    checkpointing, the adapter and compile as the trainer adds them (`adapt_for_training`), the
    optimizer and scheduler, the cropped samples.
    `checkpoint_info["precision"]` says the precision."""
    from lightning_fabric import Fabric

    accelerator = resolve_accelerator(training.run.accelerator)
    if training.run.cuda_graphs:
        check_cuda_graphs_support(accelerator)
    precision, dtype = resolve_precision(training, accelerator)
    fabric = Fabric(accelerator=accelerator, devices=1, precision=precision)
    torch.manual_seed(seed)
    quantized = training.model.quantization != "none"  # built on the host, quantized onto the device
    transformer = random_transformer(model, torch.device("cpu") if quantized else fabric.device, dtype)
    if quantized:
        quantize_transformer(transformer, training.model.quantization, fabric.device, compute_dtype(precision, dtype))
    attention = plan_attention(transformer, fabric.device, compute_dtype(precision, dtype))
    adapter = adapt_for_training(transformer, training, precision)
    o = training.optimizer
    optimizer = build_optimizer(adapter.parameters(), o.name, o.lr, o.weight_decay, tuple(o.betas), o.eps)
    scheduler = build_scheduler(optimizer, o.scheduler, o.warmup_steps, 10**6, o.restarts)
    wrapped, optimizer = fabric.setup(transformer, optimizer)
    indices = list(range(len(samples)))
    max_frames = round(training.data.max_seconds * FRAMES_PER_SECOND) if training.data.max_seconds else None
    silence = torch.randn(1, 15000, 64, device=fabric.device)
    null = torch.randn(1, 1, model.encoder_hidden_size, device=fabric.device)
    o_cfg = training.objective
    objective = Objective(o_cfg.timestep_sampling, o_cfg.timestep_mu if o_cfg.timestep_mu is not None else -0.4,
                          o_cfg.timestep_sigma or 1.0, o_cfg.cfg_dropout, o_cfg.min_snr_gamma)
    return TrainingSession(training, fabric, work, wrapped, adapter, optimizer, scheduler, samples,
                           CroppedSamples(samples, indices, max_frames, seed), None, indices, objective, silence, null,
                           dtype, max(len(indices) // training.data.batch_size, 1), 10**6, {"precision": precision},
                           attention=attention.describe())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device, repeats: int, call) -> float:
    """Median seconds of `call()` over `repeats` runs, after one warm-up run."""
    call()
    times = []
    for _ in range(repeats):
        synchronize(device)
        began = time.perf_counter()
        call()
        synchronize(device)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def is_out_of_memory(error: BaseException | str) -> bool:
    """Whether an exception (or its causes), or a log's text, says the GPU ran out of memory;
    torch.compile wraps the error of a compiled region in its own exception types."""
    if isinstance(error, str):
        return any(marker in error for marker in OOM_MARKERS)
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, torch.OutOfMemoryError) or is_out_of_memory(f"{type(error).__name__}: {error}"):
            return True
        error = error.__cause__ or error.__context__
    return False


def environment() -> dict:
    """Date, GPU, driver, torch and CUDA versions, as a result file records them. Asks NVML, not
    torch.cuda, so the process that runs the benchmark cells holds no CUDA context of its own."""
    from acestep.gpu.monitor import read_gpus

    report = read_gpus()
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "gpus": [f"{gpu.name}, {gpu.total_bytes // 2**20} MiB" for gpu in report.gpus],
            "driver": report.driver_version, "cuda_driver": report.cuda_driver_version, "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "python": platform.python_version(), "cpu": report.cpu}


def random_module(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A module built on the meta device (`build_component`, `empty_weights`) with random weights made
    in `dtype` on `device`: N(0, 0.02), norm weights 1. Its buffers (RoPE tables, FSQ levels) keep
    their real values, unlike `to_empty`; frozen and in eval mode."""
    tensors = {}
    for name, param in module.named_parameters():
        tensor = torch.empty(param.shape, device=device, dtype=dtype)
        tensors[name] = tensor.fill_(1.0) if "norm" in name and param.dim() == 1 else tensor.normal_(0.0, 0.02)
    module.load_state_dict(tensors, strict=False, assign=True)
    return module.to(device).requires_grad_(False).eval()
