"""The VRAM estimate: exact parameter, gradient and optimizer-state bytes against a real tiny
model trained one step on CPU; monotone in batch, crop and rank; checkpointing and compile lower it."""

import dataclasses

import pytest
import torch

from acestep.gpu.estimate import (
    ACESTEP_XL_DIT_CONFIG,
    GIB,
    PART_NAMES,
    EstimateTuning,
    estimate_vram,
    optimizer_state_bytes,
    re_estimate,
    vary,
)
from acestep.models import load_acestep, read_dit_config
from acestep.training.adapters import add_adapter
from acestep.training.config import TrainingConfig, apply_overrides
from acestep.training.data import TrainingBatch
from acestep.training.optim import build_optimizer
from acestep.training.quantization import nf4_bytes
from acestep.training.step import Objective, batch_loss


@pytest.fixture(scope="module")
def tiny_dit(tiny_checkpoints):
    return tiny_checkpoints / "acestep-v15-turbo"


def config_with(*overrides: str) -> TrainingConfig:
    return apply_overrides(TrainingConfig(), ["data.tensors_dir=/t", *overrides])


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    storages = {}
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                storages[value.untyped_storage().data_ptr()] = value.untyped_storage().nbytes()
    return sum(storages.values())


# --- exact counts on CPU ---------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "rank", "optimizer", "mlp"), [
    ("lora", 8, "adamw", False), ("lora", 64, "adamw", True), ("lora", 8, "adamw8bit", False),
    ("lora", 64, "adamw8bit", True), ("lora", 8, "adafactor", True), ("lora", 16, "prodigy", False),
    ("dora", 8, "adamw", False), ("dora", 64, "adamw8bit", False), ("dora", 8, "adafactor", True),
    ("dora", 8, "prodigy", True), ("lokr", 8, "adamw", False), ("lokr", 4, "adafactor", True),
    ("lokr", 8, "prodigy", True), ("lokr", 64, "adamw8bit", True),
])
def test_parameter_gradient_and_optimizer_parts_equal_the_counted_bytes(tiny_dit, kind, rank, optimizer, mlp):
    config = config_with(f"adapter.type={kind}", f"adapter.rank={rank}", f"adapter.mlp={mlp}",
                         f"optimizer.name={optimizer}", "optimizer.lr=1.0" if optimizer == "prodigy" else "run.seed=1")
    estimate = estimate_vram(config, read_dit_config(tiny_dit), accelerator="cpu")

    bundle = load_acestep(tiny_dit, dtype=torch.float32, components=("transformer",))
    model = bundle.transformer
    adapter = add_adapter(model, kind, rank, 2.0 * rank, 0.1, "attention", mlp, None, -1)
    model.train()
    opt = build_optimizer(adapter.parameters(), optimizer, config.optimizer.lr)
    batch = TrainingBatch(torch.randn(2, 30, 64), torch.ones(2, 30, dtype=torch.bool), torch.randn(2, 7, 64),
                          torch.ones(2, 7, dtype=torch.bool), ["a", "b"])
    loss, _ = batch_loss(model, batch, Objective("logit_normal", -0.4, 1.0, 0.15, None), bundle.silence_latent,
                         bundle.null_condition_emb, torch.Generator().manual_seed(0), torch.float32)
    loss.backward()
    opt.step()

    frozen = [p for p in model.parameters() if not p.requires_grad]
    trainable = adapter.parameters()
    assert estimate.frozen_params == sum(p.numel() for p in frozen)
    assert estimate.trainable_params == sum(p.numel() for p in trainable)
    assert estimate.parts["weights"] == sum(p.numel() * p.element_size() for p in frozen)
    assert estimate.parts["adapter"] == sum(p.numel() * p.element_size() for p in trainable)
    assert estimate.parts["gradients"] == sum(p.grad.numel() * p.grad.element_size() for p in trainable)
    assert estimate.parts["optimizer"] == state_bytes(opt)
    assert estimate.parts["autocast copies"] == 0  # fp32 on CPU: no autocast
    assert estimate.parts["CUDA context"] == 0 and estimate.parts["allocator"] == 0


@pytest.mark.parametrize("kind", ["lora", "lokr"])
def test_a_moving_average_adds_the_bytes_it_holds_to_the_adapter_part(tiny_dit, kind):
    from acestep.training.averaging import AdapterAverage

    plain = estimate_vram(config_with(f"adapter.type={kind}"), read_dit_config(tiny_dit), accelerator="cpu")
    averaged = estimate_vram(config_with(f"adapter.type={kind}", "optimizer.ema_decay=0.999"),
                             read_dit_config(tiny_dit), accelerator="cpu")
    model = load_acestep(tiny_dit, dtype=torch.float32, components=("transformer",)).transformer
    average = AdapterAverage(add_adapter(model, kind, 64, 128.0, 0.1, "attention", False, None, -1).parameters(), 0.999)
    held = sum(a.numel() * a.element_size() for a in average.average)
    assert averaged.parts["adapter"] == plain.parts["adapter"] + held
    assert {k: v for k, v in averaged.parts.items() if k not in ("adapter", "allocator")} == {
        k: v for k, v in plain.parts.items() if k not in ("adapter", "allocator")}
    assert "trainable parameters, fp32, and their moving average" in averaged.describe()


def test_eight_bit_adamw_state_is_a_quarter_of_adamw_for_large_tensors():
    shapes = [("a", (64, 2048)), ("b", (2048, 64))]
    full = optimizer_state_bytes("adamw", shapes)
    assert full == 8 * 2 * 131072 + 2 * 4
    eight = optimizer_state_bytes("adamw8bit", shapes)
    assert eight == 2 * (2 * 131072 + 8 * 512) + 2048
    assert optimizer_state_bytes("adamw8bit", [("small", (8, 64))]) == 8 * 512  # below 4096 values: fp32 state
    assert optimizer_state_bytes("adafactor", [("m", (64, 2048)), ("v", (2048,))]) == 4 * (64 + 2048 + 2048 + 2)
    assert optimizer_state_bytes("prodigy", [("x.lora_A.w", (4, 4)), ("x.lora_B.w", (4, 4))]) == 4 * (64 + 49)


# --- the 2B model ----------------------------------------------------------------------------------


def test_the_2b_counts_match_the_model_reference():
    estimate = estimate_vram(config_with("adapter.rank=64", "adapter.mlp=true"))
    assert estimate.frozen_params == 1_575_458_880  # reference/acestep-model.md 1.5: the decoder
    assert estimate.trainable_params == 81_788_928  # 2.6: self+cross attention + MLP at r=64
    assert estimate.parts["weights"] == 2 * 1_575_458_880  # bf16 on CUDA
    assert estimate_vram(config_with("adapter.rank=8")).trainable_params == 5_505_024
    assert estimate.parts["autocast copies"] == 2 * 81_788_928
    assert estimate.parts["CUDA context"] == EstimateTuning().cuda_context_bytes
    assert set(estimate.parts) == set(PART_NAMES)
    assert estimate.total_bytes == sum(estimate.parts.values())
    assert estimate.allocated_bytes == estimate.total_bytes - estimate.parts["allocator"] - estimate.parts[
        "CUDA context"]


def test_an_nf4_base_holds_its_block_weights_in_half_a_byte_and_a_bit():
    plain, quantized = estimate_vram(config_with()), estimate_vram(config_with("model.quantization=nf4"))
    blocks = 24 * (2 * (2048 * 2048 * 2 + 2048 * 1024 * 2) + 3 * 2048 * 6144)  # attention q, o, k, v and the MLP
    assert blocks == 1_509_949_440
    nf4 = 24 * (2 * (2 * nf4_bytes(2048 * 2048) + 2 * nf4_bytes(2048 * 1024)) + 3 * nf4_bytes(2048 * 6144))
    assert plain.parts["weights"] - quantized.parts["weights"] == 2 * blocks - nf4
    assert 0.5158 < nf4 / blocks < 0.5159  # 4 bits, an 8-bit absmax per 64, an fp32 scale per 256 absmax
    assert quantized.parts["workspace"] - plain.parts["workspace"] == 2 * 2048 * 6144  # one MLP weight in bf16
    assert quantized.trainable_params == plain.trainable_params and "NF4 base" in quantized.summary


def test_monotone_in_batch_crop_and_rank():
    base = config_with("run.gradient_checkpointing=false")

    def totals(**changes_by_value):
        (key, values), = changes_by_value.items()
        return [estimate_vram(vary(base, **{key: v})).total_bytes for v in values]

    for series in (totals(data__batch_size=[1, 2, 3, 4]), totals(data__max_seconds=[10.0, 30.0, 60.0, 120.0]),
                   totals(adapter__rank=[4, 8, 16, 32, 64, 128])):
        assert series == sorted(series) and len(set(series)) == len(series), series
    ckpt = vary(base, run__gradient_checkpointing=True)
    for series in ([estimate_vram(vary(ckpt, data__batch_size=b)).total_bytes for b in (1, 2, 4)],
                   [estimate_vram(vary(ckpt, data__max_seconds=s)).total_bytes for s in (10.0, 60.0, 240.0)]):
        assert series == sorted(series) and len(set(series)) == len(series), series


def test_checkpointing_a_share_of_the_layers_lies_between_none_and_all():
    plain = config_with("run.gradient_checkpointing=false", "data.batch_size=2")
    every = vary(plain, run__gradient_checkpointing=True)
    totals = [estimate_vram(vary(every, run__gradient_checkpointing_ratio=r)).total_bytes for r in (0.25, 0.5, 0.75)]
    assert estimate_vram(every).total_bytes < totals[2] < totals[1] < totals[0] < estimate_vram(plain).total_bytes
    half = estimate_vram(vary(every, run__gradient_checkpointing_ratio=0.5))
    assert "gradient checkpointing on for 12 of 24 layers" in half.summary
    assert "gradient checkpointing on," in estimate_vram(every).summary
    # the ratio applies only with checkpointing on
    assert estimate_vram(vary(plain, run__gradient_checkpointing_ratio=0.5)).total_bytes == estimate_vram(
        plain).total_bytes


def test_activations_grow_faster_than_linearly_with_the_crop():
    base = config_with("run.gradient_checkpointing=false")
    short, long = (estimate_vram(vary(base, data__max_seconds=s)).parts["activations"] for s in (60.0, 240.0))
    assert long > 4 * short  # the math kernel of the sliding layers keeps heads x S x S probabilities


@pytest.mark.parametrize("preset_like", [
    ["data.batch_size=3"], ["adapter.rank=128", "adapter.mlp=true"], ["optimizer.name=adafactor"],
    ["adapter.type=dora"], ["adapter.type=lokr", "adapter.rank=16"], ["data.max_seconds=none"],
])
def test_checkpointing_and_compile_lower_it(preset_like):
    plain = config_with("run.gradient_checkpointing=false", *preset_like)
    checkpointed = vary(plain, run__gradient_checkpointing=True)
    compiled = vary(plain, run__compile=True)
    first = estimate_vram(plain)
    assert estimate_vram(checkpointed).parts["activations"] < first.parts["activations"] / 4
    assert estimate_vram(checkpointed).total_bytes < first.total_bytes
    assert estimate_vram(compiled).total_bytes < first.total_bytes
    assert re_estimate(first, checkpointed).total_bytes == estimate_vram(checkpointed).total_bytes


def test_the_optimizers_order_as_expected():
    totals = {name: estimate_vram(config_with(f"optimizer.name={name}", "optimizer.lr=1.0" if name == "prodigy"
                                              else "run.seed=1")).parts["optimizer"]
              for name in ("adamw", "adamw8bit", "adafactor", "prodigy")}
    assert totals["adafactor"] < totals["adamw8bit"] < totals["adamw"] < totals["prodigy"]
    assert totals["adamw8bit"] / totals["adamw"] == pytest.approx(0.25, abs=0.01)


def test_an_xl_config_gives_a_larger_estimate():
    from acestep.models.config import parse_model_config

    xl = parse_model_config(dict(ACESTEP_XL_DIT_CONFIG))
    config = config_with()
    small, large = estimate_vram(config), estimate_vram(config, xl)
    assert large.frozen_params == 4_168_897_088  # reference 1.5: the XL decoder
    assert large.total_bytes > 1.5 * small.total_bytes


def test_describe_names_every_part_and_the_settings():
    estimate = estimate_vram(config_with("data.batch_size=2", "run.gradient_checkpointing=true"))
    text = estimate.describe()
    assert text.startswith(f"Estimated peak GPU memory: {estimate.total_bytes / GIB:.2f} GiB")
    for name in PART_NAMES:
        assert f"\n  {name}" in text
    assert "batch 2 x 60 s (1500 frames)" in text and "gradient checkpointing on" in text
    assert "1,575,458,880 frozen parameters" in text


def test_world_size_adds_the_gradient_buckets_and_tuning_scales_the_activations():
    config = config_with()
    one, two = estimate_vram(config), estimate_vram(config, world_size=2)
    assert two.parts["gradients"] == 2 * one.parts["gradients"]
    scaled = estimate_vram(config, tuning=dataclasses.replace(EstimateTuning(), activation_scale=2.0))
    assert scaled.parts["activations"] == pytest.approx(2 * one.parts["activations"], rel=1e-9)
