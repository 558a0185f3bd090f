"""The frozen base model held in 4 bits while an adapter trains on it (QLoRA).

`model.quantization = "nf4"` replaces every Linear layer of the transformer's blocks (attention
and MLP projections: 96% of the 2B transformer's weights, 98% of the XL's) with bitsandbytes'
`Linear4bit` before the adapter is attached: 4-bit NormalFloat weights with an absmax per 64
weights, the absmax values themselves stored in 8 bits (QLoRA's double quantisation), about 0.52
bytes per weight instead of 2 in bf16. Each layer dequantizes its weight to the training dtype
for its product, so the activations are those of the unquantized model. PEFT's LoRA and DoRA wrap
these layers as they wrap plain ones; the adapter still trains in fp32, and the rest of the model
(embeddings, norms, the input and output projections) stays at `model.dtype`.

Layers are quantized one at a time from the host copy onto the device, so the bf16 model never
has to fit on the GPU (the 4B XL models' blocks alone are 8.1 GB in bf16, 2.1 GB in NF4).
The adapter learns the difference to the quantized weights; exports and merges apply it to the
full-precision model, as QLoRA adapters are used everywhere.
"""

from __future__ import annotations

import torch
from torch import nn

from acestep.errors import TrainingError
from acestep.training.config_schema import QUANTIZATIONS

NF4_BLOCK = 64  # weights per absmax (bitsandbytes' default for 4-bit)
DOUBLE_QUANT_BLOCK = 256  # absmax values per fp32 scale of the 8-bit absmax (double quantisation)


def nf4_bytes(numel: int) -> int:
    """Bytes an NF4 weight of `numel` values holds on the device: the 4-bit codes, an 8-bit absmax
    per block of 64 and an fp32 scale per 256 absmax values (bitsandbytes' 256-value code table and
    a few scalars per layer are left out)."""
    blocks = -(-numel // NF4_BLOCK)
    return -(-numel // 2) + blocks + 4 * -(-blocks // DOUBLE_QUANT_BLOCK)


def quantizable_linears(transformer: nn.Module) -> list[str]:
    """Names of the Linear layers `quantize_transformer` replaces: those of the blocks (an
    adapter's own layers and the frozen layer PEFT wraps, `base_layer`, excepted)."""
    return [name for name, module in transformer.named_modules()
            if type(module) is nn.Linear and name.startswith("layers.") and ".lora_" not in name
            and not name.endswith(".base_layer")]


def require_bitsandbytes():
    """The bitsandbytes module; raises `TrainingError` with the install command when it is missing."""
    try:
        import bitsandbytes
    except ImportError as exc:
        raise TrainingError("model.quantization=nf4 needs the bitsandbytes package (not available on macOS): "
                            "env/bin/python -m pip install bitsandbytes, or set model.quantization=none.") from exc
    return bitsandbytes


def _nf4_layer(linear: nn.Linear, compute_dtype: torch.dtype, device: torch.device) -> nn.Module:
    bnb = require_bitsandbytes()
    has_bias = linear.bias is not None
    layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=has_bias, compute_dtype=compute_dtype,
                              compress_statistics=True, quant_type="nf4", device="meta")
    layer.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False, blocksize=NF4_BLOCK,
                                     compress_statistics=True, quant_type="nf4", module=layer)
    if has_bias:
        layer.bias = nn.Parameter(linear.bias.data, requires_grad=False)
    # On CPUs with AVX-512 BF16, bitsandbytes repacks the weight for a bf16 inference kernel the first
    # time the layer runs in eval mode without gradients (a preview), and training then computes through
    # that kernel, in bf16: off, so a preview leaves training as it was.
    layer.support_avx512bf16_for_cpu = False
    return layer.to(device)  # bitsandbytes quantizes as the weight moves to the device


def quantize_transformer(transformer: nn.Module, kind: str, device: torch.device | str,
                         compute_dtype: torch.dtype) -> int:
    """Replace the Linear layers of the transformer's blocks with NF4 layers (`kind` "nf4") that
    compute in `compute_dtype` on `device`, one at a time, then move the rest of the transformer
    there. Call it before attaching an adapter. Returns how many layers were quantized; raises
    `TrainingError` when bitsandbytes is missing or `kind` is unknown."""
    if kind != "nf4":
        raise TrainingError(f"model.quantization must be one of {', '.join(QUANTIZATIONS)}, got {kind!r}")
    device = torch.device(device)
    names = quantizable_linears(transformer)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = transformer.get_submodule(parent_name)
        setattr(parent, child, _nf4_layer(getattr(parent, child), compute_dtype, device))
    transformer.to(device)
    return len(names)


def load_transformer(checkpoint, quantization: str, dtype: torch.dtype, device: torch.device | str,
                     compute_dtype: torch.dtype, checkpoints_dir=None):
    """`load_acestep`'s bundle with the transformer alone, on `device`. With `quantization` "nf4"
    the model is read on the host and its blocks quantized onto `device` layer by layer
    (`quantize_transformer`, computing in `compute_dtype`), so the bf16 model never has to fit there."""
    from acestep.models.load import load_acestep

    quantized = quantization != "none"
    bundle = load_acestep(checkpoint, dtype=dtype, device="cpu" if quantized else device,
                          components=("transformer",), checkpoints_dir=checkpoints_dir)
    if quantized:
        quantize_transformer(bundle.transformer, quantization, device, compute_dtype)
    return bundle


def parameter_count(module: nn.Module) -> int:
    """The parameters of `module`, a 4-bit weight counted as the values it holds (its packed
    tensor has half as many elements)."""
    total = 0
    for param in module.parameters():
        state = getattr(param, "quant_state", None)
        total += state.shape.numel() if state is not None else param.numel()
    return total
