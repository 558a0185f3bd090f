"""Model FLOPs of one LoRA training step of the ACE-Step DiT, for model-FLOPs utilisation (MFU).

MFU = (forward + backward FLOPs of the step) / step time / the GPU's dense bf16 peak. Counted are
the matrix products the step needs, as the model is built (`AceStepTransformer1DModel`):
- forward: patch convolution, time embeddings, condition embedder, per layer the self- and
  cross-attention projections, the attention products (QK^T and PV; a sliding layer only over its
  band |i - j| <= window), the MLP, the LoRA products, the output convolution;
- backward: only the gradients the step needs. The base weights are frozen, so a base matmul
  costs one more matmul (the input gradient) where its input needs a gradient, and nothing where
  it does not: the hidden states need one only after the first adapted module (layer 0's input
  is the patchified noisy latents, modulated by frozen time embeddings), and the condition tokens
  never do (so cross-attention keys and values cost no backward besides their LoRA). An attention
  product costs a gradient matmul per operand that needs one. A LoRA module costs the gradients of
  its two factors and of its input.
Not counted: gradient-checkpointing recomputation (MFU counts the model's work, not the
schedule's), element-wise ops, norms, softmax. tests/test_benchmarks.py checks the count against
`torch.utils.flop_counter.FlopCounterMode` on a small model.
"""

from __future__ import annotations

from dataclasses import dataclass

# Dense bf16 tensor-core peaks in TFLOP/s (NVIDIA data sheets, sparsity excluded); the first name
# contained in the device name wins, so the specific variants come first.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
    ("A100", 312.0), ("L40S", 362.0), ("RTX 4090", 165.0),
)
TIME_EMBEDDING_CHANNELS = 256  # sinusoid width of diffusers' AceStepTimestepEmbedding


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of the GPU called `device_name` (None when not in the table)."""
    return next((value for name, value in PEAK_BF16_TFLOPS if name in device_name), None)


@dataclass(frozen=True)
class StepFlops:
    forward: float
    backward: float

    @property
    def total(self) -> float:
        return self.forward + self.backward


def band_pairs(seq: int, window: int) -> int:
    """Query-key pairs with |i - j| <= window in a sequence of `seq` tokens."""
    if seq <= window + 1:
        return seq * seq
    return seq * (2 * window + 1) - window * (window + 1)


class _Counter:
    """Adds up forward and backward FLOPs while following which tensors need a gradient."""

    def __init__(self, lora_rank: int):
        self.rank, self.forward, self.backward = lora_rank, 0.0, 0.0

    def linear(self, rows: int, fan_in: int, fan_out: int, input_grad: bool, lora: bool) -> bool:
        """A frozen Linear (optionally with LoRA) on `rows` rows; returns whether its output needs a gradient."""
        self.forward += 2 * rows * fan_in * fan_out
        if input_grad:
            self.backward += 2 * rows * fan_in * fan_out
        if lora and self.rank:
            r = self.rank
            self.forward += 2 * rows * r * (fan_in + fan_out)
            # grads of B and of A's output, of A, and of the input through A
            self.backward += 2 * rows * r * (2 * fan_out + fan_in + (fan_in if input_grad else 0))
        return input_grad or (lora and self.rank > 0)

    def attention(self, pairs: int, width: int, q_grad: bool, k_grad: bool, v_grad: bool) -> bool:
        """softmax(QK^T) V over `pairs` query-key pairs with `width` = heads x head_dim."""
        product = 2 * pairs * width
        self.forward += 2 * product
        scores_grad = q_grad or k_grad
        self.backward += product * (scores_grad + v_grad + q_grad + k_grad)  # dP, dV, dQ, dK
        return scores_grad or v_grad


def step_flops(config: dict, batch: int, frames: int, tokens: int, lora_rank: int = 0,
               lora_targets: str = "attention", lora_mlp: bool = False, encoder_hidden_size: int | None = None
               ) -> StepFlops:
    """Forward and backward FLOPs of one training step of the DiT `config` (a config.json dict) on
    `batch` samples of `frames` latent frames and `tokens` condition tokens, with a LoRA of
    `lora_rank` on `lora_targets` (attention | self_attention | cross_attention) and the MLP when
    `lora_mlp`. `encoder_hidden_size` defaults to the hidden size (the 2B model)."""
    hidden, heads, kv_heads, head_dim = (int(config[k]) for k in ("hidden_size", "num_attention_heads",
                                                                  "num_key_value_heads", "head_dim"))
    inter, window, channels = int(config["intermediate_size"]), int(config["sliding_window"]), int(
        config["in_channels"])
    out_channels, patch = int(config["audio_acoustic_hidden_dim"]), int(config["patch_size"])
    q, kv = heads * head_dim, kv_heads * head_dim
    seq = -(-frames // patch)
    self_lora = lora_targets in ("attention", "self_attention")
    cross_lora = lora_targets in ("attention", "cross_attention")
    c = _Counter(lora_rank)
    # time embeddings (t and t - r) per sample, the condition embedder, the patch convolution: no gradient
    c.forward += 2 * 2 * (TIME_EMBEDDING_CHANNELS * hidden + hidden * hidden + hidden * 6 * hidden)
    c.linear(tokens, encoder_hidden_size or hidden, hidden, input_grad=False, lora=False)
    c.linear(seq, channels * patch, hidden, input_grad=False, lora=False)
    live = False  # whether the hidden states need a gradient
    for kind in config["layer_types"][: int(config["num_hidden_layers"])]:
        pairs = seq * seq if kind == "full_attention" else band_pairs(seq, window)
        grads = [c.linear(seq, hidden, width, live, self_lora) for width in (q, kv, kv)]
        attended = c.attention(pairs, q, *grads)
        live = c.linear(seq, q, hidden, attended, self_lora) or live
        query = c.linear(seq, hidden, q, live, cross_lora)
        key, value = (c.linear(tokens, hidden, kv, False, cross_lora) for _ in range(2))
        attended = c.attention(seq * tokens, q, query, key, value)
        live = c.linear(seq, q, hidden, attended, cross_lora) or live
        gate, up = (c.linear(seq, hidden, inter, live, lora_mlp) for _ in range(2))
        live = c.linear(seq, inter, hidden, gate or up, lora_mlp) or live
    c.linear(seq, hidden, out_channels * patch, live, lora=False)  # the transposed output convolution
    return StepFlops(batch * c.forward, batch * c.backward)
