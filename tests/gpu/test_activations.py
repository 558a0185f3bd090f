"""The activation count against what autograd really keeps: a tiny DiT in bf16 under CPU autocast
(the CUDA recipe, with the CPU kernels' profile), for every adapter type and target set."""

import itertools

import pytest
import torch

from acestep.gpu.activations import (
    CPU_KERNELS,
    CUDA_KERNELS,
    CUDA_REPEATED_KV_KERNELS,
    CUDA_SM90_KERNELS,
    KernelProfile,
    AdapterShape,
    ModelShape,
    activation_bytes,
    checkpointed_layers,
    count_saved_bytes,
    cuda_kernels,
)
from acestep.models.attention import AceStepAttentionProcessor, AttentionPlan
from acestep.models.config import parse_model_config
from acestep.models.load import build_component
from acestep.models.tiny import TINY_DIT_CONFIG
from acestep.training.adapters import add_adapter
from acestep.training.data import TrainingBatch
from acestep.training.recompute import enable_recompute
from acestep.training.step import Objective, batch_loss

CONFIG = parse_model_config(TINY_DIT_CONFIG)
BATCH, FRAMES, TOKENS = 2, 91, 11  # an odd frame count: the DiT pads one frame before patching


def measure(kind, rank, dropout, targets, mlp, checkpointing=False, kernels=CPU_KERNELS, plan=None, ratio=1.0):
    torch.manual_seed(0)
    model = build_component(CONFIG, "transformer").to(torch.bfloat16).to_empty(device="cpu")
    if plan is not None:
        for module in model.modules():
            if hasattr(module, "processor"):
                module.set_processor(AceStepAttentionProcessor(plan))
    for param in model.parameters():
        torch.nn.init.normal_(param, std=0.02)
    if checkpointing:
        enable_recompute(model, ratio)  # as the session does
    adapter = add_adapter(model, kind, rank, 2.0 * rank, dropout, targets, mlp, None, -1)
    if kind != "lokr":
        adapter.skip_input_casts()  # as the session does under mixed precision
    model.train()
    batch = TrainingBatch(torch.randn(BATCH, FRAMES, 64), torch.ones(BATCH, FRAMES, dtype=torch.bool),
                          torch.randn(BATCH, TOKENS, 64), torch.ones(BATCH, TOKENS, dtype=torch.bool), ["a", "b"])
    shapes = [tuple(p.shape) for p in adapter.parameters() if p.dim() == 2]
    with count_saved_bytes(model, shapes) as measured:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = batch_loss(model, batch, Objective("logit_normal", -0.4, 1.0, 0.0, None),
                                 torch.randn(1, 15000, 64), torch.randn(1, 1, 64), torch.Generator().manual_seed(0),
                                 torch.bfloat16)
    loss.backward()  # the graph was whole
    shape = ModelShape.from_config(CONFIG)
    adapter_shape = AdapterShape.from_module_names(kind, rank, dropout, adapter.modules, shape.layers)
    counted = activation_bytes(shape, adapter_shape, batch=BATCH, frames=FRAMES, encoder_tokens=TOKENS, mixed=True,
                               checkpointing=checkpointing, checkpoint_ratio=ratio, kernels=kernels)
    return measured, counted, sum(p.numel() for p in adapter.parameters())


@pytest.mark.parametrize(("kind", "dropout", "targets", "mlp"), [
    *itertools.product(("lora",), (0.0, 0.1), ("attention", "self_attention", "cross_attention"), (False, True)),
    *itertools.product(("dora", "lokr"), (0.0, 0.1), ("attention", "cross_attention"), (False, True)),
])
def test_the_count_matches_what_autograd_keeps(kind, dropout, targets, mlp):
    measured, counted, trainable = measure(kind, 8, dropout, targets, mlp)
    assert counted.recomputed == 0
    assert counted.kept == pytest.approx(measured["saved"], rel=0.015)
    assert measured["copies"] <= 2 * trainable  # autocast's bf16 copies of the adapter weights


@pytest.mark.parametrize("mlp", [False, True])
def test_with_checkpointing_the_forward_keeps_only_the_layer_inputs(mlp):
    measured, counted, _ = measure("lora", 8, 0.1, "attention", mlp, checkpointing=True)
    plain_measured, plain, _ = measure("lora", 8, 0.1, "attention", mlp)
    assert counted.kept == pytest.approx(measured["saved"], rel=0.03)
    assert plain.kept == pytest.approx(plain_measured["saved"], rel=0.015)
    layers = CONFIG.transformer_kwargs()["num_hidden_layers"]
    assert counted.kept < plain.kept / 3
    assert 0.8 * plain.kept / layers < counted.recomputed < 1.6 * plain.kept / layers  # one layer at a time


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_with_the_first_layers_checkpointed_the_others_keep_their_activations(ratio):
    measured, counted, _ = measure("lora", 8, 0.1, "attention", True, checkpointing=True, ratio=ratio)
    _, every, _ = measure("lora", 8, 0.1, "attention", True, checkpointing=True)
    _, plain, _ = measure("lora", 8, 0.1, "attention", True)
    assert counted.kept == pytest.approx(measured["saved"], rel=0.03)
    assert every.kept < counted.kept < plain.kept
    # the recomputation of a first layer comes after the later layers' activations are freed
    assert counted.saved <= max(counted.kept, every.saved)


def test_the_ratio_checkpoints_a_rounded_share_of_the_layers_and_at_least_one():
    assert [checkpointed_layers(24, r) for r in (1.0, 0.5, 0.3, 0.01)] == [24, 12, 7, 1]
    assert [checkpointed_layers(4, r) for r in (0.25, 0.5, 0.75, 1.0)] == [1, 2, 3, 4]


def test_the_cuda_profile_keeps_fp32_probabilities_in_the_sliding_layers():
    shape = ModelShape.from_config(CONFIG)
    names = [f"layers.{i}.self_attn.{m}" for i in range(shape.layers) for m in ("to_q", "to_k", "to_v", "to_out.0")]
    adapter = AdapterShape.from_module_names("lora", 8, 0.0, names, shape.layers)

    def kept(frames, kernels):
        return activation_bytes(shape, adapter, batch=1, frames=frames, encoder_tokens=TOKENS,
                                kernels=kernels).kept

    tokens = 500
    sliding = sum(kind == "sliding_attention" for kind in shape.layer_types)
    grow_cuda = kept(4 * tokens, CUDA_KERNELS) - kept(2 * tokens, CUDA_KERNELS)
    # doubling S from 500 to 1000 tokens adds heads x (1000^2 - 500^2) x 4 bytes per sliding layer
    quadratic = sliding * shape.heads * (1000 ** 2 - 500 ** 2) * 4
    assert grow_cuda > quadratic
    assert kept(4 * tokens, CPU_KERNELS) < kept(4 * tokens, CUDA_KERNELS)


def test_count_saved_bytes_counts_a_storage_once_and_forgets_dropped_graphs():
    weight = torch.nn.Parameter(torch.randn(8, 8))
    module = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8, requires_grad=True)
    with count_saved_bytes(module) as measured:
        y = (x * x).sum() + (x * weight.sum()).sum()  # x kept by both products: counted once
        side = (torch.randn(100, 100, requires_grad=True) ** 2).sum()  # kept, then dropped with its graph
        del side
    assert measured["saved"] == 4 * 8 * 4 + 4  # x and the scalar weight.sum()
    y.backward()


FLOATS = 4 * 8 * 4 + 4 * 2 * 4  # the gather's input, the square's input (the gathered values)


@pytest.mark.parametrize(("floating_only", "expected"), [(False, FLOATS + 4 * 2 * 8), (True, FLOATS)])
def test_count_saved_bytes_can_leave_out_tensors_that_are_not_floating_point(floating_only, expected):
    """A gather keeps its input and its int64 indices, the square its float input; `floating_only`
    counts the floating-point tensors alone (a checkpoint's recomputation also keeps random-number
    generator states, which are bytes)."""
    x = torch.randn(4, 8, requires_grad=True)
    index = torch.tensor([[0, 1]] * 4)
    with count_saved_bytes(torch.nn.Linear(8, 8), floating_only=floating_only) as measured:
        y = (x.gather(1, index) ** 2).sum()
    assert measured["saved"] == expected
    y.backward()


@pytest.mark.parametrize("mlp", [False, True])
def test_the_repeated_kv_count_matches_what_autograd_keeps_when_the_processor_repeats(mlp):
    """The count of a fused kernel given repeated K/V heads, against autograd on CPU with the
    processor told to repeat every grouped call (what a GPU before 9.0 gets for the masked ones)."""
    cpu_repeated = KernelProfile("cpu-repeated", CPU_KERNELS.dropout_mask_bytes, "repeated", CPU_KERNELS.keeps_mask,
                                 CPU_KERNELS.fused_norm)
    measured, counted, _ = measure("lora", 8, 0.1, "attention", mlp, kernels=cpu_repeated,
                                   plan=AttentionPlan(repeat_masked=True, repeat_unmasked=True))
    _, grouped, _ = measure("lora", 8, 0.1, "attention", mlp)
    assert counted.kept == pytest.approx(measured["saved"], rel=0.015)
    assert counted.kept > grouped.kept  # K and V kept at the query width


def test_each_gpu_generation_gets_its_kernel_profile():
    assert cuda_kernels((9, 0)) is CUDA_SM90_KERNELS and cuda_kernels((12, 0)) is CUDA_SM90_KERNELS
    assert cuda_kernels((8, 9)) is CUDA_REPEATED_KV_KERNELS and cuda_kernels((8, 0)) is CUDA_REPEATED_KV_KERNELS
    assert cuda_kernels((7, 5), bf16=False) is CUDA_REPEATED_KV_KERNELS  # fp16 on Turing: the efficient kernel
    assert cuda_kernels((7, 5), bf16=True) is CUDA_KERNELS  # no fused kernel takes bf16 there
    assert cuda_kernels(None) is CUDA_KERNELS  # unknown: the worst case
    shape = ModelShape.from_config(CONFIG)
    names = [f"layers.{i}.self_attn.{m}" for i in range(shape.layers) for m in ("to_q", "to_k", "to_v", "to_out.0")]
    adapter = AdapterShape.from_module_names("lora", 8, 0.0, names, shape.layers)
    math_kept, repeated_kept, flash_kept = (
        activation_bytes(shape, adapter, batch=1, frames=1500, encoder_tokens=TOKENS, kernels=k).kept
        for k in (CUDA_KERNELS, CUDA_REPEATED_KV_KERNELS, CUDA_SM90_KERNELS))
    sliding = sum(kind == "sliding_attention" for kind in shape.layer_types)
    assert math_kept - repeated_kept > sliding * shape.heads * 750 ** 2 * 4  # at least the fp32 probabilities
    assert repeated_kept > flash_kept
