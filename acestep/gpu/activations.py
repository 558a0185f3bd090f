"""Activation memory of one training step of the ACE-Step DiT, counted tensor by tensor.

`activation_bytes` walks the transformer's forward the way autograd sees it and adds up the
tensors it keeps for the backward pass, each once (tensors several ops keep, such as an input
shared by q/k/v under LoKr, are labelled and counted once). It knows what the frozen base keeps
(nothing for a frozen Linear: its weight is a parameter already counted), what PEFT LoRA/DoRA and
LyCORIS LoKr keep, and what each attention kernel keeps. `count_saved_bytes` measures the same
thing on a real model through `torch.autograd.graph.saved_tensors_hooks`, so the count is checked
against autograd on CPU (tests) and on CUDA (benchmarks/gpu_presets.py).

Per DiT layer and per token (S = latent frames / patch 2; E = condition tokens; H hidden,
I MLP width, Q = heads x head_dim, K = kv_heads x head_dim, r rank, a = 2 bytes in mixed
precision, 4 in fp32):
- each RMSNorm whose input needs a gradient (`acestep.models.norms`: `F.rms_norm`): CUDA's fused
  kernel keeps its input (a*width) and rsqrt (4 per group); PyTorch's composite (CPU) keeps the
  fp32 upcast of the input instead (4*width, mixed precision; the input itself in fp32); three per
  layer over H, q_norm over Q, k_norm over K;
- each adapted Linear: LoRA/DoRA keep their input (a*in; PEFT's cast to fp32 is skipped under
  autocast, so layers fed the same input, such as q/k/v, share it) or, with dropout, the dropout
  output and mask (`mask_bytes`*in, only where the input needs a gradient), and lora_A's output
  (a*r); DoRA also the base and LoRA outputs (2*a*out), LoKr the input (a*in, shared) and the
  merged weight (a*out*in per module, once, where the input needs a gradient);
- attention: flash kernels keep q, k, v, the output and the fp32 log-sum-exp; the math kernel
  upcasts to fp32 and keeps q, the repeated k and v and the probabilities (4*heads*S per token:
  quadratic in the crop). For the sliding-window layers (band mask plus GQA) CUDA GPUs of compute
  capability 9.0 and later take cuDNN's flash kernel (measured on an H200, PyTorch 2.11: what
  autograd kept matched the flash count to 0.1%); older GPUs get PyTorch's efficient kernel with
  K/V heads repeated (`acestep.models.attention`: the dispatcher would run the math kernel
  there), which keeps q, k and v at the query width, the output and the log-sum-exp; an unknown
  GPU, or bf16 on a GPU before 8.0, is counted with the math kernel, the worst case;
- the SwiGLU MLP: gate output, SiLU output and up output (3*a*I).
Layer 0's input needs no gradient, so it keeps less. With gradient checkpointing only each
layer's input (a*H per token) and the condition are kept, and one layer is recomputed at a time;
with only the first layers checkpointed (`run.gradient_checkpointing_ratio`), the others keep
all of theirs, and the backward pass frees those before it recomputes the first ones.
`torch.compile` (inductor) is assumed to recompute the pointwise ops instead of keeping them:
no fp32 norm upcasts, no SiLU output.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

LOSS_BYTES_PER_FRAME = 4 * 64 + 1  # fp32 (prediction - target) of the 64 latent channels, and the frame mask
CUBLAS_WORKSPACE_BYTES = 64 * 2**20  # cuBLAS/cuBLASLt workspaces the caching allocator hands out
ATTENTION_MODULES = ("q", "k", "v", "o")
MLP_MODULES = ("gate", "up", "down")


@dataclass(frozen=True)
class KernelProfile:
    """What the kernels of one device keep for the backward pass.

    `dropout_mask_bytes`: bytes per element of a dropout mask (CUDA's fused dropout keeps a bool;
    None: a mask of the input's dtype, which the CPU path multiplies by).
    `masked_attention`: the kernel for attention with a mask and GQA: "math" (fp32 upcast,
    probabilities kept), "flash" (a fused kernel that takes grouped K/V heads and the mask: CPU's
    flash kernel, cuDNN's) or "repeated" (a fused kernel given K/V heads repeated to the query
    heads, as `acestep.models.attention` does where the dispatcher would run the math kernel;
    counted so for every grouped call, masked or not, which also covers builds without a flash
    kernel). `keeps_mask`: the kernel keeps the additive mask (one for all sliding layers).
    `fused_norm`: `F.rms_norm` runs as one fused kernel, which keeps the input (CUDA), not as the
    composite arithmetic, which keeps its fp32 upcast (CPU)."""

    name: str
    dropout_mask_bytes: int | None
    masked_attention: str
    keeps_mask: bool
    fused_norm: bool


CUDA_KERNELS = KernelProfile("cuda", 1, "math", False, True)  # an unknown GPU, or bf16 before 8.0: the worst case
CUDA_REPEATED_KV_KERNELS = KernelProfile("cuda-repeated-kv", 1, "repeated", False, True)  # efficient kernel
CUDA_SM90_KERNELS = KernelProfile("cuda-sm90", 1, "flash", False, True)  # cuDNN attention takes the band mask
CPU_KERNELS = KernelProfile("cpu", None, "flash", True, False)


def cuda_kernels(capability: tuple[int, int] | None, bf16: bool = True) -> KernelProfile:
    """The kernel profile of a CUDA GPU of compute `capability` computing in bf16 (`bf16`) or in
    fp16/fp32. None: unknown, the worst case. From 9.0 cuDNN takes the sliding-window calls as
    they are (measured on an H200); before, PyTorch's efficient kernel takes them with K/V heads
    repeated (`acestep.models.attention`), except bf16 before 8.0, which no fused kernel takes."""
    if capability is None:
        return CUDA_KERNELS
    if tuple(capability) >= (9, 0):
        return CUDA_SM90_KERNELS
    return CUDA_REPEATED_KV_KERNELS if tuple(capability) >= (8, 0) or not bf16 else CUDA_KERNELS


@dataclass(frozen=True)
class ModelShape:
    """The DiT dimensions the activations depend on."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    layer_types: tuple[str, ...]
    encoder_hidden: int
    patch_size: int
    latent_channels: int

    @classmethod
    def from_config(cls, config) -> ModelShape:
        """From an `AceStepModelConfig`."""
        kwargs = config.transformer_kwargs()
        layers = kwargs["num_hidden_layers"]
        return cls(kwargs["hidden_size"], kwargs["intermediate_size"], kwargs["num_attention_heads"],
                   kwargs["num_key_value_heads"], kwargs["head_dim"], tuple(kwargs["layer_types"][:layers]),
                   kwargs["encoder_hidden_size"], kwargs["patch_size"], kwargs["audio_acoustic_hidden_dim"])

    @property
    def layers(self) -> int:
        return len(self.layer_types)


@dataclass(frozen=True)
class AdapterShape:
    """Which modules of each layer are adapted ("self.q", "cross.o", "mlp.down", ...), how, at what rank."""

    kind: str  # lora | dora | lokr
    rank: int
    dropout: float
    per_layer: tuple[frozenset[str], ...]

    @classmethod
    def from_module_names(cls, kind: str, rank: int, dropout: float, names: list[str], layers: int) -> AdapterShape:
        """From full module names in diffusers' naming (`layers.3.self_attn.to_q`, `layers.3.mlp.up_proj`)."""
        per_layer: list[set[str]] = [set() for _ in range(layers)]
        short = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "o", "gate_proj": "gate", "up_proj": "up",
                 "down_proj": "down"}
        for name in names:
            parts = name.split(".")
            if len(parts) < 4 or parts[0] != "layers":
                continue
            block = {"self_attn": "self", "cross_attn": "cross", "mlp": "mlp"}.get(parts[2])
            leaf = short.get(".".join(parts[3:]))
            if block and leaf:
                per_layer[int(parts[1])].add(f"{block}.{leaf}")
        return cls(kind, rank, dropout, tuple(frozenset(s) for s in per_layer))


def checkpointed_layers(layers: int, ratio: float) -> int:
    """How many of `layers` blocks `run.gradient_checkpointing_ratio` checkpoints (the first ones;
    `acestep.training.recompute`): the ratio's share, rounded, at least one."""
    return max(1, min(layers, round(ratio * layers)))


@dataclass(frozen=True)
class Activations:
    """Bytes of activation memory at the step's peak: `kept` (what the forward pass leaves for the
    backward pass), `recomputed` (one layer's activations rebuilt during the backward pass under
    gradient checkpointing, else 0), `workspace` (temporaries of the largest backward op, the
    batch on the device, cuBLAS workspaces)."""

    kept: int
    recomputed: int
    workspace: int

    @property
    def saved(self) -> int:
        return self.kept + self.recomputed

    @property
    def total(self) -> int:
        return self.saved + self.workspace


class _Tally:
    """Saved tensors by label: a tensor kept by several ops is counted once."""

    def __init__(self) -> None:
        self.items: dict[str, int] = {}

    def add(self, label: str, nbytes: float) -> None:
        self.items.setdefault(label, int(nbytes))

    @property
    def total(self) -> int:
        return sum(self.items.values())


class _Step:
    """One forward pass as autograd records it; `a` bytes per activation element."""

    def __init__(self, model: ModelShape, adapter: AdapterShape, kernels: KernelProfile, batch: int,
                 tokens: int, encoder_tokens: int, mixed: bool, compiled: bool):
        self.m, self.ad, self.k = model, adapter, kernels
        self.b, self.s, self.e = batch, tokens, encoder_tokens
        self.mixed, self.compiled = mixed, compiled
        self.a = 2 if mixed else 4

    # --- building blocks: each returns whether its output needs a gradient ----------------------
    def norm(self, t: _Tally, label: str, source: str, rows: int, width: int, groups: int, grad: bool) -> bool:
        if grad:
            if self.mixed and not (self.compiled or self.k.fused_norm):  # the composite's fp32 upcast
                t.add(f"{label}.fp32", rows * width * 4)
            else:  # the input itself: the fused kernel's, inductor's, or the composite's in fp32
                t.add(source, rows * width * self.a)
            t.add(f"{label}.rsqrt", rows * groups * 4)
        return grad

    def linear(self, t: _Tally, label: str, source: str, rows: int, n_in: int, n_out: int, grad: bool,
               adapted: bool) -> bool:
        if not adapted:
            return grad  # a frozen Linear keeps only its weight, a parameter
        a, r, dropout = self.a, self.ad.rank, self.ad.dropout > 0
        if self.ad.kind == "lokr":  # LyCORIS rebuilds the weight: F.linear(x, merged) keeps its input,
            # the very tensor (the stream is contiguous: acestep.models.layout), so q/k/v share one
            t.add(source, rows * n_in * a)
            if grad:
                t.add(f"{label}.merged", n_out * n_in * a)
            return True
        if dropout and grad:
            t.add(f"{label}.mask", rows * n_in * (self.k.dropout_mask_bytes or a))
        # the input itself (PEFT's cast to fp32 is skipped under autocast: Adapter.skip_input_casts),
        # shared by the layers it feeds, or this layer's dropout output
        t.add(f"{label}.dropped" if dropout else source, rows * n_in * a)
        t.add(f"{label}.b_in", rows * r * a)
        if self.ad.kind == "dora":  # with dropout DoRA runs the frozen weight itself again: nothing more kept
            t.add(f"{label}.dora", 2 * rows * n_out * a)
        return True

    def attention(self, t: _Tally, label: str, q_rows: int, kv_rows: int, masked: bool, grad: bool) -> None:
        if not grad:
            return
        m, b = self.m, self.b
        q_width, kv_width = m.heads * m.head_dim, m.kv_heads * m.head_dim
        if masked and self.k.masked_attention == "math":
            t.add(f"{label}.q32", q_rows * q_width * 4)
            t.add(f"{label}.kv32", 2 * kv_rows * q_width * 4)  # k and v repeated to every query head
            t.add(f"{label}.probs", b * m.heads * (q_rows // b) * (kv_rows // b) * 4)
            return
        t.add(f"{label}.q", q_rows * q_width * self.a)
        if self.k.masked_attention == "repeated":  # the kernel keeps K and V repeated to every query head
            kv_width = q_width
        t.add(f"{label}.kv", 2 * kv_rows * kv_width * self.a)
        t.add(f"{label}.out", q_rows * q_width * self.a)
        t.add(f"{label}.lse", q_rows * m.heads * 4)
        if masked and self.k.keeps_mask:
            t.add("sliding_mask", (q_rows // b) * (kv_rows // b) * self.a)

    # --- the model ------------------------------------------------------------------------------
    def layer(self, t: _Tally, i: int, grad_in: bool) -> bool:
        m, kinds = self.m, self.ad.per_layer[i]
        rows, enc = self.b * self.s, self.b * self.e
        q_width, kv_width = m.heads * m.head_dim, m.kv_heads * m.head_dim
        x = f"L{i}"
        t.add("rope", 2 * self.s * m.head_dim * self.a)  # cos and sin, shared by every layer
        grad = self.norm(t, f"{x}.self_norm", f"{x}.in", rows, m.hidden, 1, grad_in)
        gq = self.linear(t, f"{x}.self.q", f"{x}.self_normed", rows, m.hidden, q_width, grad, "self.q" in kinds)
        gk = self.linear(t, f"{x}.self.k", f"{x}.self_normed", rows, m.hidden, kv_width, grad, "self.k" in kinds)
        gv = self.linear(t, f"{x}.self.v", f"{x}.self_normed", rows, m.hidden, kv_width, grad, "self.v" in kinds)
        self.norm(t, f"{x}.self.q_norm", f"{x}.self.q_raw", rows, q_width, m.heads, gq)
        self.norm(t, f"{x}.self.k_norm", f"{x}.self.k_raw", rows, kv_width, m.kv_heads, gk)
        g_att = gq or gk or gv
        self.attention(t, f"{x}.self.attn", rows, rows, m.layer_types[i] == "sliding_attention", g_att)
        go = self.linear(t, f"{x}.self.o", f"{x}.self.attn.out", rows, q_width, m.hidden, g_att, "self.o" in kinds)
        grad = grad_in or go
        if grad:  # AdaLN scales and gates, [B, 1, H] each
            t.add(f"{x}.modulation", 8 * self.b * m.hidden * self.a)
        grad = self.norm(t, f"{x}.cross_norm", f"{x}.mid1", rows, m.hidden, 1, grad)
        gq = self.linear(t, f"{x}.cross.q", f"{x}.cross_normed", rows, m.hidden, q_width, grad, "cross.q" in kinds)
        gk = self.linear(t, f"{x}.cross.k", "encoder", enc, m.hidden, kv_width, False, "cross.k" in kinds)
        gv = self.linear(t, f"{x}.cross.v", "encoder", enc, m.hidden, kv_width, False, "cross.v" in kinds)
        self.norm(t, f"{x}.cross.q_norm", f"{x}.cross.q_raw", rows, q_width, m.heads, gq)
        self.norm(t, f"{x}.cross.k_norm", f"{x}.cross.k_raw", enc, kv_width, m.kv_heads, gk)
        g_att = gq or gk or gv
        self.attention(t, f"{x}.cross.attn", rows, enc, False, g_att)
        go = self.linear(t, f"{x}.cross.o", f"{x}.cross.attn.out", rows, q_width, m.hidden, g_att,
                         "cross.o" in kinds)
        grad = grad or go
        grad = self.norm(t, f"{x}.mlp_norm", f"{x}.mid2", rows, m.hidden, 1, grad)
        gg = self.linear(t, f"{x}.mlp.gate", f"{x}.mlp_normed", rows, m.hidden, m.intermediate, grad,
                         "mlp.gate" in kinds)
        gu = self.linear(t, f"{x}.mlp.up", f"{x}.mlp_normed", rows, m.hidden, m.intermediate, grad,
                         "mlp.up" in kinds)
        if gg:
            t.add(f"{x}.mlp.gate_out", rows * m.intermediate * self.a)
            t.add(f"{x}.mlp.up_out", rows * m.intermediate * self.a)
        if gu:  # the SiLU output; inductor recomputes it from the gate output instead
            label = f"{x}.mlp.gate_out" if self.compiled else f"{x}.mlp.silu_out"
            t.add(label, rows * m.intermediate * self.a)
        gd = self.linear(t, f"{x}.mlp.down", f"{x}.mlp.product", rows, m.intermediate, m.hidden, gg or gu,
                         "mlp.down" in kinds)
        return grad or gd

    def head(self, t: _Tally, frames: int, grad: bool) -> None:
        rows = self.b * self.s
        self.norm(t, "head.norm", "head.in", rows, self.m.hidden, 1, grad)
        if grad:
            t.add("head.modulation", 2 * self.b * self.m.hidden * self.a)
            t.add("head.proj_out_in", rows * self.m.hidden * self.a)
            t.add("loss", self.b * frames * LOSS_BYTES_PER_FRAME)

    def saved(self, frames: int, checkpointed: int) -> tuple[int, int]:
        """(kept by the forward pass, what the backward pass adds to that at most) with the first
        `checkpointed` layers checkpointed (0: none)."""
        kept = _Tally()
        if checkpointed:
            # A checkpointed layer keeps its input (the hidden states; position embeddings, time
            # projection, mask and condition are shared by all layers) and is recomputed alone.
            kept.add("encoder", self.b * self.e * self.m.hidden * self.a)
            kept.add("rope", 2 * self.s * self.m.head_dim * self.a)
            kept.add("time_projection", 6 * self.b * self.m.hidden * self.a)
            if "sliding_attention" in self.m.layer_types:  # the band mask is an input of the sliding layers
                kept.add("sliding_mask", self.s * self.s * self.a)
        largest, grad, plain = 0, False, _Tally()
        for i in range(self.m.layers):
            if i < checkpointed:
                kept.add(f"L{i}.in", self.b * self.s * self.m.hidden * self.a)
                layer = _Tally()
                grad = self.layer(layer, i, grad)
                largest = max(largest, layer.total - layer.items.get(f"L{i}.in", 0) - layer.items.get("encoder", 0))
            else:
                grad = self.layer(plain, i, grad)
        # The backward pass frees the plain layers' activations, layer by layer, before it reaches
        # the checkpointed ones and recomputes them one at a time (what they share stays).
        freed = sum(nbytes for label, nbytes in plain.items.items() if label not in kept.items)
        for label, nbytes in plain.items.items():
            kept.add(label, nbytes)
        self.head(kept, frames, grad)
        return kept.total, max(0, largest - freed)

    def workspace(self, frames: int) -> int:
        """Temporaries of the largest backward op, plus the batch and the constants on the device."""
        m, rows, a = self.m, self.b * self.s, self.a
        mlp = rows * (3 * m.intermediate + 2 * m.hidden) * a  # grads of the MLP product, SiLU, gate, up; input
        q_width = m.heads * m.head_dim
        attention = rows * 6 * q_width * a
        if self.k.masked_attention == "math" and "sliding_attention" in m.layer_types:
            attention = self.b * (2 * m.heads * self.s * self.s * 4 + 3 * self.s * q_width * 4)
        merged = 0  # LoKr rebuilds each weight in fp32; DoRA builds an identity, the LoRA product and a copy
        if self.ad.kind in ("lokr", "dora"):
            for kinds in self.ad.per_layer:
                for kind in kinds:
                    n_in, n_out = _module_dims(m, kind)
                    extra = n_in * n_in * 4 if self.ad.kind == "dora" else 0
                    merged = max(merged, extra + n_out * n_in * (4 + 4 + a))
        batch = self.b * (frames * m.latent_channels * 4 * 6 + self.e * m.encoder_hidden * (4 + a))
        constants = 2 * self.s * m.head_dim * a + _SILENCE_FRAMES * m.latent_channels * 4
        return max(mlp, attention) + merged + batch + constants + CUBLAS_WORKSPACE_BYTES


_SILENCE_FRAMES = 15_000  # the silence latent every run keeps on the device (600 s at 25 frames/s)


def _module_dims(m: ModelShape, kind: str) -> tuple[int, int]:
    q_width, kv_width = m.heads * m.head_dim, m.kv_heads * m.head_dim
    block, leaf = kind.split(".")
    if block == "mlp":
        return (m.intermediate, m.hidden) if leaf == "down" else (m.hidden, m.intermediate)
    return {"q": (m.hidden, q_width), "k": (m.hidden, kv_width), "v": (m.hidden, kv_width),
            "o": (q_width, m.hidden)}[leaf]


def activation_bytes(model: ModelShape, adapter: AdapterShape, *, batch: int, frames: int, encoder_tokens: int,
                     mixed: bool = True, checkpointing: bool = False, checkpoint_ratio: float = 1.0,
                     compiled: bool = False, kernels: KernelProfile = CUDA_KERNELS) -> Activations:
    """Activation memory of one training micro-step (see the module docstring for the count).

    In: the model and adapter shapes, the batch size, the latent frames per sample (the crop,
    25 per second), the condition tokens per sample, mixed precision (bf16/fp16 autocast) or
    fp32, gradient checkpointing (of the first `checkpointed_layers(layers, checkpoint_ratio)`
    layers), torch.compile, and the device's kernels. Out: `Activations`.
    """
    tokens = math.ceil(frames / model.patch_size)
    step = _Step(model, adapter, kernels, batch, tokens, encoder_tokens, mixed, compiled)
    kept, recomputed = step.saved(frames, checkpointed_layers(model.layers, checkpoint_ratio) if checkpointing else 0)
    return Activations(kept, recomputed, step.workspace(frames))


@contextmanager
def count_saved_bytes(model, exclude_shapes=(), floating_only: bool = False):
    """Measure what autograd keeps for the backward pass of the forward run inside the block.

    Yields a dict filled when the block ends: `saved` (bytes of distinct storages still kept,
    leaving out the model's parameters) and `copies` (the part held by low-precision copies of
    trainable parameters, recognised by a 2-D shape in `exclude_shapes` or its transpose, as
    autocast makes them). Storages are told apart by address, so a tensor kept by several ops
    counts once; tensors of graphs already dropped (a detached side computation) do not count.
    `floating_only`: count floating-point tensors alone, leaving out integer and byte ones (random
    generators' states and seeds kept for a recomputation, indices).
    """
    import weakref

    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    shapes = {tuple(s) for s in exclude_shapes} | {tuple(reversed(s)) for s in exclude_shapes}
    kept: list[tuple[weakref.ref, int, int, bool]] = []

    class Held:  # what the graph holds instead of the tensor; dropped with the graph
        __slots__ = ("tensor", "__weakref__")

        def __init__(self, tensor):
            self.tensor = tensor

    def pack(tensor):
        held = Held(tensor)
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params and (tensor.is_floating_point() or not floating_only):
            copy = tensor.dim() == 2 and tuple(tensor.shape) in shapes and tensor.requires_grad
            kept.append((weakref.ref(held), storage.data_ptr(), storage.nbytes(), copy))
        return held

    result: dict[str, int] = {}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda held: held.tensor):
        yield result
    alive = {address: (size, copy) for ref, address, size, copy in kept if ref() is not None}
    result["saved"] = sum(size for size, copy in alive.values() if not copy)
    result["copies"] = sum(size for size, copy in alive.values() if copy)
