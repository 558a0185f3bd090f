"""The frozen base in NF4 (model.quantization): the bytes it holds, the layers it replaces, an
adapter training on it, and a whole run that resumes exactly."""

import json
import sys

import pytest
import torch
from bitsandbytes.nn import Linear4bit
from torch import nn

from acestep.errors import TrainingError
from acestep.models import load_acestep
from acestep.training.adapters import add_adapter
from acestep.training.loop import train
from acestep.training.quantization import (
    nf4_bytes,
    parameter_count,
    quantizable_linears,
    quantize_transformer,
)
from training.test_loop import adapter_tensors, events, make_config, train_stopped_after


def held_bytes(layer: Linear4bit) -> int:
    state = layer.weight.quant_state
    return layer.weight.nbytes + state.absmax.nbytes + state.state2.absmax.nbytes


@pytest.mark.parametrize(("out_features", "in_features"), [(384, 256), (1024, 2048), (30, 70)])
def test_nf4_bytes_are_what_bitsandbytes_holds(out_features, in_features):
    linear = nn.Linear(in_features, out_features, bias=False)
    layer = Linear4bit(in_features, out_features, bias=False, compress_statistics=True, quant_type="nf4")
    layer.weight = type(layer.weight)(linear.weight.data, requires_grad=False, compress_statistics=True,
                                      quant_type="nf4", module=layer)
    layer = layer.to("cpu")
    assert held_bytes(layer) == nf4_bytes(out_features * in_features)
    assert nf4_bytes(2048 * 2048) == 2048 * 2048 // 2 + 65_536 + 4 * 256  # 0.516 bytes per weight


def forward_and_gradients(transformer, adapter, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for param in adapter.parameters():  # a trained-looking adapter: lora_B away from zero
        param.data.normal_(0, 0.05, generator=generator)
    x, context = torch.randn(2, 30, 64, generator=generator), torch.randn(2, 30, 128, generator=generator)
    condition, t = torch.randn(2, 7, 64, generator=generator), torch.rand(2, generator=generator)
    out = transformer(hidden_states=x, timestep=t, timestep_r=t, encoder_hidden_states=condition,
                      context_latents=context).sample
    out.pow(2).mean().backward()
    return out.detach(), torch.cat([p.grad.flatten() for p in adapter.parameters()])


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_an_adapter_trains_on_the_nf4_blocks(tiny_dit, kind):
    plain = load_acestep(tiny_dit, dtype=torch.float32, components=("transformer",)).transformer
    quantized = load_acestep(tiny_dit, dtype=torch.float32, components=("transformer",)).transformer
    names, count = quantizable_linears(quantized), parameter_count(quantized)
    assert len(names) == 44 and all(name.startswith("layers.") for name in names)  # 4 blocks: 2 x 4 attention + 3 MLP
    assert quantize_transformer(quantized, "nf4", "cpu", torch.float32) == 44
    assert all(isinstance(quantized.get_submodule(name), Linear4bit) for name in names)
    outside = [m for n, m in quantized.named_modules() if isinstance(m, nn.Linear) and not n.startswith("layers.")]
    assert outside and all(type(m) is nn.Linear for m in outside)  # time embeddings, condition embedder: as they were
    assert parameter_count(quantized) == count  # 4-bit weights counted as the values they hold

    expected, expected_grad = forward_and_gradients(plain, add_adapter(plain, kind, 4, 8.0, 0.0, "attention"))
    adapter = add_adapter(quantized, kind, 4, 8.0, 0.0, "attention")
    assert adapter.modules == add_adapter(load_acestep(tiny_dit, dtype=torch.float32, components=(
        "transformer",)).transformer, kind, 4, 8.0).modules
    out, grad = forward_and_gradients(quantized, adapter)
    error = ((out - expected).norm() / expected.norm()).item()
    assert 1e-4 < error < 0.1  # quantized, and close
    assert torch.nn.functional.cosine_similarity(grad, expected_grad, dim=0) > 0.95
    assert all(not p.requires_grad for n, p in quantized.named_parameters() if "lora_" not in n)


def test_a_run_without_bitsandbytes_stops_with_the_install_command(tmp_path, tensors_17, tiny_dit, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails, as where it is not installed
    with pytest.raises(TrainingError, match=r"model.quantization=nf4 needs the bitsandbytes package .*"
                                            r"env/bin/python -m pip install bitsandbytes"):
        train(make_config(tmp_path, tensors_17, tiny_dit, "model.quantization=nf4"))
    assert not (tmp_path / "runs").exists()  # refused before a run folder was made


def test_an_unknown_kind_is_refused(tiny_dit):
    transformer = load_acestep(tiny_dit, dtype=torch.float32, components=("transformer",)).transformer
    with pytest.raises(TrainingError, match="model.quantization must be one of none, nf4, got 'int4'"):
        quantize_transformer(transformer, "int4", "cpu", torch.float32)


def test_a_run_on_an_nf4_base_trains_saves_and_resumes_exactly(tmp_path, tensors_17, tiny_dit):
    overrides = ("model.quantization=nf4", "run.epochs=2", "optimizer.gradient_accumulation=2",
                 "run.save_every_epochs=0")
    straight = train(make_config(tmp_path / "a", tensors_17, tiny_dit, *overrides))
    assert straight.status == "completed"
    start = next(e for e in events(straight.run_dir) if e["type"] == "start")
    assert "frozen attention and MLP weights in NF4 (bitsandbytes)" in start["message"]
    plain = train(make_config(tmp_path / "c", tensors_17, tiny_dit, *overrides[1:]))
    a, p = adapter_tensors(straight.run_dir / "final"), adapter_tensors(plain.run_dir / "final")
    assert a.keys() == p.keys()  # the same official module names: exports and merges take it as any adapter
    assert not all(torch.equal(a[k], p[k]) for k in a)  # it did train on the quantized weights
    metadata = json.loads((straight.run_dir / "final" / "training_metadata.json").read_text())
    assert metadata["base_quantization"] == "nf4"

    interrupted = make_config(tmp_path / "b", tensors_17, tiny_dit, *overrides)
    first = train_stopped_after(interrupted, 4)
    assert first.status == "stopped" and first.step == 4
    second = train(interrupted, resume=first.run_dir)
    b = adapter_tensors(second.run_dir / "final")
    assert second.step == straight.step and all(torch.equal(a[k], b[k]) for k in a)


def test_a_stopped_run_resumes_on_an_nf4_base_as_after_running_out_of_memory(tmp_path, tensors_17, tiny_dit):
    first = train_stopped_after(make_config(tmp_path, tensors_17, tiny_dit, "run.epochs=1"), 2)
    resumed = train(make_config(tmp_path, tensors_17, tiny_dit, "run.epochs=1", "model.quantization=nf4"),
                    resume=first.run_dir)
    assert resumed.status == "completed" and resumed.step == 17
    warnings = [e["message"] for e in events(first.run_dir) if e["type"] == "warning"]
    assert any("resumed with changed settings: model.quantization 'none' -> 'nf4'" in w for w in warnings)
    assert "quantization = \"nf4\"" in (first.run_dir / "config.toml").read_text()


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_an_xl_checkpoint_trains_with_and_without_an_nf4_base(tmp_path, quantization):
    from models.test_xl import XL_CONFIG
    from training.conftest import write_tensors_dir

    from acestep.models.tiny import write_dit_checkpoint

    xl = tmp_path / "acestep-v15-xl-turbo"  # decoder 96 wide, q 128, conditions 64
    generator = torch.Generator().manual_seed(7)
    write_dit_checkpoint(xl, XL_CONFIG, generator, torch.randn(1, 300, 64, generator=generator))
    tensors = write_tensors_dir(tmp_path / "tensors", xl, 4)
    result = train(make_config(tmp_path, tensors, xl, f"model.quantization={quantization}"))
    assert result.status == "completed" and result.step == 8
    logs = [e["loss"] for e in events(result.run_dir) if e["type"] == "log"]
    assert len(logs) == 8 and all(0 < loss < 10 for loss in logs)
    names = adapter_tensors(result.run_dir / "final").keys()
    assert "base_model.model.layers.0.self_attn.q_proj.lora_A.weight" in names
    assert len(names) == 2 * 4 * 2 * 4  # lora_A and lora_B of q, k, v, o in self and cross attention, 4 blocks


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_under_bf16_autocast_an_nf4_run_follows_the_unquantized_one(tmp_path, tiny_dit, kind):
    from training.conftest import write_tensors_dir

    tensors = write_tensors_dir(tmp_path / "tensors", tiny_dit, 6)
    common = ("run.precision=bf16-mixed", "model.dtype=bf16", "run.epochs=1", f"adapter.type={kind}")
    curves = []
    for quantization in ("none", "nf4"):
        result = train(make_config(tmp_path / quantization, tensors, tiny_dit, *common,
                                   f"model.quantization={quantization}"))
        curves.append([e["loss"] for e in events(result.run_dir) if e["type"] == "log"])
    plain, nf4 = curves
    assert len(plain) == len(nf4) == 6 and nf4 != plain
    assert max(abs(a - b) for a, b in zip(plain, nf4, strict=True)) < 0.02
