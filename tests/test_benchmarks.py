"""The benchmark scripts: their FLOP count, the reference loop, the grid runner and its out-of-memory
reporting, the preprocessing throughput (tiny sizes: this checks the code, not speed)."""

import importlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def bench(name: str):
    """A module of benchmarks/ (they import each other as top-level modules)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def tiny_lora_transformer(targets: str = "attention", mlp: bool = False, rank: int = 4):
    from acestep.models.config import parse_model_config
    from acestep.training.adapters import add_adapter

    common = bench("common")
    config = common.model_config("tiny")
    torch.manual_seed(0)
    model = common.random_transformer(parse_model_config(config), torch.device("cpu"), torch.float32)
    add_adapter(model, "lora", rank, 2.0 * rank, 0.0, targets, mlp, [], -1)
    with torch.no_grad():  # lora_B starts at zero; give the adapter an effect
        for param in model.parameters():
            if param.requires_grad:
                param.normal_(0.0, 0.05)
    return config, model


@pytest.mark.parametrize(("targets", "mlp"), [("attention", False), ("cross_attention", True)])
def test_step_flops_equal_torch_flop_counter(targets, mlp):
    """The MFU numerator: forward and backward FLOPs of a LoRA step, counted by formula, equal
    what torch's FlopCounterMode counts on the model (frames and window chosen so the sliding
    band covers the whole sequence, as the counter counts full attention)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    config, model = tiny_lora_transformer(targets, mlp)
    batch, frames, tokens = 2, 30, 12
    assert -(-frames // 2) <= config["sliding_window"] + 1
    inputs = {"hidden_states": torch.randn(batch, frames, 64), "timestep": torch.rand(batch),
              "timestep_r": torch.rand(batch), "context_latents": torch.randn(batch, frames, 128),
              "encoder_hidden_states": torch.randn(batch, tokens, config["hidden_size"])}
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as forward:
            loss = model(**inputs).sample.square().mean()
        with FlopCounterMode(display=False) as backward:
            loss.backward()
    counted = bench("flops").step_flops(config, batch, frames, tokens, 4, targets, mlp)
    assert (counted.forward, counted.backward) == (forward.get_total_flops(), backward.get_total_flops())
    flops = bench("flops")
    assert flops.band_pairs(750, 128) == sum(min(749, i + 128) - max(0, i - 128) + 1 for i in range(750))
    assert flops.peak_tflops("NVIDIA H100 PCIe") == 756.0 and flops.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert flops.peak_tflops("NVIDIA H200") == 989.0 and flops.peak_tflops("Tesla T4") is None


def test_reference_loss_equals_the_trainer_loss_on_an_unpadded_batch_and_counts_padding():
    """Same draws, same model: the official loss (MSE over all frames) equals our masked loss when
    nothing is padded, and differs when a sample is padded; its timesteps are drawn in the
    model's dtype from the turbo table."""
    from acestep.training.data import collate
    from acestep.training.objective import TURBO_SHIFT3_TIMESTEPS, apply_cfg_dropout, sample_timesteps
    from acestep.training.step import Objective, batch_loss

    reference = bench("reference_loop")
    config, model = tiny_lora_transformer()
    width = config["hidden_size"]
    silence, null = torch.randn(1, 15000, 64), torch.randn(1, 1, width)
    g = torch.Generator().manual_seed(1)

    def item(frames):
        return {"target_latents": torch.randn(frames, 64, generator=g), "id": str(frames),
                "encoder_hidden_states": torch.randn(10, width, generator=g),
                "encoder_attention_mask": torch.ones(10, dtype=torch.bool)}

    objective = Objective("logit_normal", -0.4, 1.0, 0.0, None)
    losses = {}
    for lengths in ((40, 40), (40, 24)):
        batch = collate([item(n) for n in lengths])
        ours, _ = batch_loss(model, batch, objective, silence, null, torch.Generator().manual_seed(5), torch.float32)
        replay = torch.Generator().manual_seed(5)  # batch_loss's draw order: CFG dropout, timesteps, noise
        apply_cfg_dropout(batch.encoder_hidden_states, null, 0.0, replay)
        t, _ = sample_timesteps(len(lengths), -0.4, 1.0, replay)
        noise = torch.randn(batch.target_latents.shape, generator=replay)
        inputs = reference.official_batch(batch, silence, torch.float32)
        losses[lengths] = (ours.item(), reference.reference_loss(model, inputs, t, noise).item())
    assert losses[(40, 40)][1] == pytest.approx(losses[(40, 40)][0], rel=1e-5)
    assert abs(losses[(40, 24)][1] / losses[(40, 24)][0] - 1) > 0.02

    table = torch.tensor(TURBO_SHIFT3_TIMESTEPS, dtype=torch.bfloat16)
    t, noise = reference.reference_draws(torch.zeros(64, 8, 4, dtype=torch.bfloat16), table,
                                         torch.Generator().manual_seed(0))
    assert t.dtype == noise.dtype == torch.bfloat16 and set(t.tolist()) <= set(table.tolist())
    assert 0.9545454545454546 not in t.tolist() and 0.953125 in table.tolist()  # bf16 rounding of the table


def tiny_random_transformer(common):
    """The tiny DiT with random weights, fp32 on the CPU, as benchmarks/common.py builds it."""
    from acestep.models.config import parse_model_config

    return common.random_transformer(parse_model_config(common.model_config("tiny")), torch.device("cpu"),
                                     torch.float32)


def _tiny_args(**changes):
    import argparse

    values = dict(size="tiny", batch=1, seconds=1.0, steps=2, warmup=1, gradient_checkpointing=False, compile=False,
                  cuda_graphs=False, varied_conditions=False, adapter_dropout=False, no_finite_check=False,
                  gradient_accumulation=1)
    return argparse.Namespace(**{**values, **changes})


def _cell_command(grid, cell, json_path: Path) -> list[str]:
    """The training_step.py command training_grid.py runs for `cell` (tiny model, one short round)."""
    args = _tiny_args(python="python", steps=1, rounds=1, bare=False, no_reference=True, peak_tflops=None)
    return grid.cell_command(cell, args, json_path)


def _grid_row(cell, result: dict) -> dict:
    """A row of the grid's results (grid.json's "cells") for `cell` with `result`."""
    return {"cell": {**vars(cell), "label": cell.label}, "result": result}


def _check_setting_cell(grid, tmp_path, label: str, settings: tuple, key: str, option: str, note: str):
    """The grid cell `label` parses to `settings` and `key`, its command passes `option` and its row
    of the table carries `note`; returns the cell."""
    cell = grid.parse_cell(label)
    assert cell.settings == settings and cell.key == key
    assert option in _cell_command(grid, cell, tmp_path / "c.json")
    assert note in grid.markdown_table([_grid_row(cell, {"status": "skipped"})])
    return cell


def test_reference_loop_reads_the_loss_every_step_and_trains_the_adapter(tmp_path):
    training_step = bench("training_step")
    session = training_step.build_benchmark_session(_tiny_args(), tmp_path)
    timer = training_step.ReferenceTimer(session, 1)
    before = [p.detach().clone() for p in session.adapter.parameters()]
    assert timer.seconds_per_step(2) > 0
    assert len(timer.loop.losses) == 2 and all(isinstance(v, float) and v > 0 for v in timer.loop.losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, session.adapter.parameters(), strict=True))
    assert training_step.optimizer_state_bytes(timer.optimizer) == 2 * 4 * sum(p.numel() for p in before) + 4 * len(
        before)  # AdamW: two fp32 moments and a step count per tensor, separate from the trainer's optimizer
    assert training_step.optimizer_state_bytes(session.optimizer) == 0


def test_the_trainer_timer_walks_the_samples_in_slices_of_any_length(tmp_path, monkeypatch):
    """Warm-up and timed rounds take different numbers of batches (the prepared GPU run: 2 and 5);
    each round trains on its own slice of the samples, read by a loader built for that slice."""
    training_step = bench("training_step")
    args = _tiny_args()
    args.steps, args.warmup = 3, 2
    session = training_step.build_benchmark_session(args, tmp_path)
    timer = training_step.TrainerTimer(session, 1)
    seen = []
    original = type(session.train_set).__getitem__

    def reading(dataset, key):
        item = original(dataset, key)
        seen.append(item["id"])
        return item

    monkeypatch.setattr(type(session.train_set), "__getitem__", reading)
    for count in (2, 3, 3):
        assert timer.seconds_per_step(count) > 0
    ids = [sample.id for sample in session.samples.manifest.samples]
    assert sorted(seen) == sorted(ids[i % len(ids)] for i in range(8))  # 2 + 3 + 3 batches of one sample


def test_training_step_reports_running_out_of_memory(tmp_path, monkeypatch, capsys):
    training_step = bench("training_step")

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(training_step, "measure", out_of_memory)
    figures = tmp_path / "cell.json"
    code = training_step.main(["--size", "tiny", "--seconds", "1", "--steps", "1", "--warmup", "1",
                               "--json", str(figures)])
    assert code == training_step.OOM_EXIT == 3
    assert "out of memory: batch 1 x 1 s" in capsys.readouterr().out
    stored = json.loads(figures.read_text())
    assert stored["status"] == "oom" and stored["message"].startswith("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_grid_cell_failures_are_reported_as_oom_timeout_or_error(tmp_path):
    grid = bench("training_grid")
    crash = "import torch; raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')"
    reported = ("import json, sys; json.dump({'status': 'oom', 'message': 'CUDA out of memory (compile)'}, "
                f"open({str(tmp_path / 'b.json')!r}, 'w')); sys.exit(3)")
    cases = {"a": crash, "b": reported, "c": "raise SystemExit('the cell failed for another reason')"}
    results = {key: grid.run_cell([sys.executable, "-c", code], tmp_path / f"{key}.log", tmp_path / f"{key}.json", 60)
               for key, code in cases.items()}
    assert results["a"]["status"] == "oom" and "Tried to allocate 2.00 GiB" in results["a"]["message"]
    assert results["b"]["status"] == "oom" and results["b"]["exit_code"] == 3
    assert results["c"]["status"] == "error" and results["c"]["message"] == "the cell failed for another reason"
    began = time.monotonic()
    hung = grid.run_cell([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "d.log",
                         tmp_path / "d.json", 1.0)
    assert hung["status"] == "timeout" and hung["exit_code"] is None and time.monotonic() - began < 20
    cell = grid.parse_cell("8x60:ckpt")
    assert (cell, cell.key) == (grid.Cell(8, 60.0, True, False), "b8-60s-ckpt")
    with pytest.raises(ValueError, match="BATCHxSECONDS"):
        grid.parse_cell("8x60:fast")
    variant = grid.parse_cell("8x60:ckpt:peftcast:difflayout")  # any order in, the table's order out
    assert variant == grid.Cell(8, 60.0, True, False, ("difflayout", "peftcast"))
    assert (variant.label, variant.key) == ("8x60:ckpt:difflayout:peftcast", "b8-60s-ckpt-difflayout-peftcast")
    command = _cell_command(grid, variant, tmp_path / "v.json")
    assert "--diffusers-layout" in command and "--peft-casts" in command and "--diffusers-rmsnorm" not in command
    noted = grid.markdown_table([{"cell": {"batch": 8, "seconds": 60.0, "checkpointing": True, "compile": False,
                                           "variants": ["difflayout", "peftcast"]}, "result": results["a"]}])
    assert "| 8 x 60 s (diffusers layout) (PEFT input casts) | on |" in noted
    table = grid.markdown_table([{"cell": {"batch": 8, "seconds": 60.0, "checkpointing": True, "compile": False},
                                  "result": results["a"]}])
    assert table.splitlines()[-1].startswith("| 8 x 60 s | on | off | **oom** | – |")
    # the most memory the cell's process reserved, CUDA graph pools included (the peak columns miss them)
    reserved = grid.markdown_table([{"cell": {"batch": 1, "seconds": 60.0, "checkpointing": False, "compile": True},
                                     "result": {"status": "ok", "reserved_gib": 12.34}}])
    assert reserved.splitlines()[0].endswith("| warm-up s | reserved GiB |") and reserved.endswith("| – | 12.3 |")
    assert all(line.count("|") == 16 for line in reserved.splitlines())


def test_a_compiling_cell_stopped_at_its_limit_says_what_torch_compile_did(tmp_path):
    """The grid stops a cell with SIGTERM, then SIGKILL; a compiling training_step.py prints its
    graphs and longest compile stages on SIGTERM, so a cell cut off while compiling says which stage held it."""
    grid = bench("training_grid")
    code = ("import sys, time, torch; sys.path.insert(0, 'benchmarks'); import training_step as t; "
            "t.report_compile_when_stopped(); f = torch.compile(lambda x: x.sin() + 1, backend='aot_eager'); "
            "f(torch.ones(3)); print('ready', flush=True); time.sleep(60)")
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    assert process.stdout.readline() == "ready\n"
    grid.stop_cell(process, grace=20)
    out = process.stdout.read()
    assert process.returncode == 128 + signal.SIGTERM
    assert re.search(r"stopped \(signal 15\) after \d+ s\ntorch\.compile: 1 graphs; longest stages: \S+ \d+\.\d s", out)
    deaf = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                             "signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert deaf.stdout.readline() == "ready\n"
    began = time.monotonic()
    grid.stop_cell(deaf, grace=0.5)  # one that ignores SIGTERM is killed after the grace
    assert deaf.returncode == -signal.SIGKILL and time.monotonic() - began < 10
    leaving = ("import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
               "signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(60)'], "
               "stdout=subprocess.PIPE); child.stdout.readline(); print(child.pid, flush=True); time.sleep(60)")
    leader = subprocess.Popen([sys.executable, "-c", leaving], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    child = int(leader.stdout.readline())
    grid.stop_cell(leader, grace=20)  # the cell ends on SIGTERM at once; its child, deaf to it, is killed too
    assert leader.returncode == -signal.SIGTERM
    for _ in range(100):
        if not _running(child):
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the cell's child {child} outlived the stop")


def _running(pid: int) -> bool:
    """Whether process `pid` exists and has not ended (a zombie nobody has reaped yet has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
def test_training_grid_runs_each_cell_in_its_own_process_and_writes_the_table(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "training_grid.py"), "--size", "tiny", "--batches", "1",
               "--seconds", "1", "--checkpointing", "off,on", "--compile", "off", "--steps", "1", "--rounds", "1",
               "--warmup", "1", "--out", str(tmp_path)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True).stdout
    stored = json.loads((tmp_path / "grid.json").read_text())
    assert [row["cell"]["label"] for row in stored["cells"]] == ["1x1", "1x1:ckpt"]
    assert stored["size"] == "tiny" and stored["environment"]["torch"] == torch.__version__
    for row in stored["cells"]:
        result = row["result"]
        assert result["status"] == "ok" and result["precision"] == "32-true" and result["frames"] == 25
        assert set(result["loops"]) == {"trainer", "reference"} and result["flops_forward"] > 0
        ours, ref = result["loops"]["trainer"], result["loops"]["reference"]
        assert result["speedup_over_reference"] == pytest.approx(ref["seconds_per_step"] / ours["seconds_per_step"])
        assert ours["samples_per_second"] == pytest.approx(1 / ours["seconds_per_step"])
        assert ours["warmup_steps"] == 1 and ours["warmup_seconds"] > 0  # compiling, if any, is in there
        assert ours["tokens_per_second"] == pytest.approx(13 / ours["seconds_per_step"])  # 25 frames -> 13 tokens
        assert result["reserved_gib"] is None  # a GPU's figure
        log = (tmp_path / result["log"]).read_text()
        assert "trainer step" in log and "reference loop" in log and "speed-up over the reference loop:" in log
    table = (tmp_path / "grid.md").read_text()
    assert table.count("| ok |") == 2 and "| 1 x 1 s | on | off | ok |" in table
    assert out.rstrip().endswith(table.rstrip().splitlines()[-1])


@pytest.mark.slow
def test_preprocess_throughput_prints_seconds_of_audio_per_second(tmp_path):
    figures = tmp_path / "throughput.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "preprocess_throughput.py"), "--size", "tiny",
               "--audio-seconds", "1", "--repeats", "1", "--caption-tokens", "300", "--json", str(figures)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True).stdout
    match = re.search(r"VAE: 1 s of audio in [\d.]+ s \(30 s chunks, 2 s overlap\): ([\d.]+) s of audio per second",
                      out)
    assert match and float(match.group(1)) > 0
    stored = json.loads(figures.read_text())
    assert stored["vae_audio_seconds_per_second"] == pytest.approx(stored["audio_seconds"] / stored["vae_seconds"])
    assert stored["caption_tokens"] == 256 and stored["lyric_tokens"] == 500  # the caption is truncated as encode does
    assert stored["text_samples_per_second"] == pytest.approx(
        1 / (stored["caption_seconds"] + stored["lyric_seconds"] + stored["condition_seconds"]))
    assert "captions/s" in out and "conditions/s" in out


def test_real_vae_and_text_encoder_configs_match_the_published_file_sizes():
    """Built on the meta device: bf16 parameters plus a safetensors header of about 100 bytes per
    tensor make the published file sizes (shared/reference/acestep-model.md 1.2)."""
    import warnings

    from diffusers import AutoencoderOobleck
    from transformers import Qwen3Config, Qwen3Model

    from acestep.models.weights import empty_weights

    common = bench("common")
    with empty_weights(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vae = AutoencoderOobleck(**common.VAE_48K_CONFIG)
        text_encoder = Qwen3Model(Qwen3Config(**common.QWEN3_EMBEDDING_CONFIG))
    for module, file_bytes in ((vae, 337_431_388), (text_encoder, 1_191_586_416)):
        header = file_bytes - 2 * sum(p.numel() for p in module.parameters())
        assert 0 < header < 200 * len(module.state_dict())


@pytest.mark.slow
def test_gpu_presets_check_trains_every_preset_and_judges_the_figures(tmp_path):
    """On CPU the script trains every preset on the tiny model (no memory figures); its judging and
    refitting, which only a GPU feeds, are checked on made-up figures."""
    figures = tmp_path / "figures.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_presets.py"), "--size", "tiny", "--steps", "1",
               "--refit", "--json", str(figures)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True).stdout
    from acestep.training.presets import BUILTIN_ORDER

    rows = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in BUILTIN_ORDER}
    assert set(rows) == set(BUILTIN_ORDER) and all(row.endswith("ok") for row in rows.values())
    assert "all presets passed (CPU: steps only, no memory comparison)" in out
    stored = json.loads(figures.read_text())
    assert stored["device"] == "cpu" and [r["preset"] for r in stored["results"]] == list(BUILTIN_ORDER)
    assert all(r["steps"] == 1 and r["estimate_allocated"] > r["static"] > 0 for r in stored["results"])

    gpu_presets = bench("gpu_presets")
    gib = 1024 ** 3
    made_up = []
    for static, activations, workspace in ((3, 10, 0.4), (3, 7, 0.3), (3.5, 0.3, 0.2), (3.2, 0.2, 0.1)):
        peak = (static + 1.1 * activations + 0.5 * workspace) * gib  # the GPU keeps 10% more than counted
        made_up.append({"preset": "p", "min_vram_gib": 16, "steps": 2, "all_steps": True, "peak_allocated": peak,
                        "peak_reserved": 1.08 * peak, "static": static * gib, "activations": activations * gib,
                        "workspace": workspace * gib, "estimate_allocated": peak, "saved_measured": 1.0,
                        "estimate_kept": 1.0})
    fitted = gpu_presets.refit(made_up)
    assert fitted["activation_scale"] == pytest.approx(1.1, abs=1e-3)
    assert fitted["workspace_scale"] == pytest.approx(0.5, abs=1e-2)
    assert fitted["allocator_fraction"] == pytest.approx(0.08) and fitted["max_error_after_refit"] < 1e-6
    assert gpu_presets.judge(made_up[2]) == []
    too_big = {**made_up[0], "min_vram_gib": 8}
    assert gpu_presets.judge(too_big) == [f"peak {too_big['peak_allocated'] / gib:.2f} GiB > 7.5 GiB"]
    off = {**made_up[2], "estimate_allocated": 1.2 * made_up[2]["peak_allocated"]}
    assert gpu_presets.judge(off) == ["estimate off by +20%"]


def test_gpu_presets_check_takes_settings_over_the_presets_such_as_an_nf4_base(tmp_path):
    figures = tmp_path / "figures.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_presets.py"), "--size", "tiny", "--steps", "1",
               "--presets", "vram_8gb", "--set", "model.quantization=nf4", "--json", str(figures)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True).stdout
    assert "all presets passed" in out
    [result] = json.loads(figures.read_text())["results"]
    assert result["preset"] == "vram_8gb model.quantization=nf4" and result["steps"] == 1

    from acestep.gpu.estimate import estimate_vram, vary
    from acestep.models.config import parse_model_config
    from acestep.training.config import TrainingConfig
    from acestep.training.presets import apply_named_preset

    tiny = parse_model_config(bench("common").model_config("tiny"))
    preset = apply_named_preset(TrainingConfig(), "vram_8gb")
    plain, nf4 = (estimate_vram(vary(preset, model__quantization=kind), tiny) for kind in ("none", "nf4"))
    assert result["estimate_parts"]["weights"] == nf4.parts["weights"] < plain.parts["weights"]


def test_the_xl_size_is_the_4b_decoder_of_the_reference():
    from acestep.models.config import parse_model_config
    from acestep.models.load import build_component

    transformer = build_component(parse_model_config(bench("common").model_config("xl")), "transformer")
    assert sum(p.numel() for p in transformer.parameters()) == 4_168_897_088  # reference 1.5: the XL decoder


def test_attention_backends_records_the_three_attention_calls_and_times_each_kernel(capsys):
    """The tiny DiT makes the same three kinds of call as the 2B one: sliding-window self-attention
    with its dense additive mask, full self-attention and cross-attention, all with the GQA flag."""
    attention = bench("attention_backends")
    calls = attention.record_calls("tiny", 1, 2.0, torch.device("cpu"), torch.float32)
    kinds = {call["kind"]: call for call in calls}
    assert set(kinds) == {"self, masked", "self", "cross"}
    frames = 2 * 25 // 2  # 2 s of latents, patch 2
    masked = kinds["self, masked"]
    assert masked["mask"] == ((1, 1, frames, frames), torch.float32) and masked["enable_gqa"]
    assert kinds["cross"]["key"][2] == 400 and kinds["self"]["mask"] is None
    rows = attention.measure(masked, torch.device("cpu"), repeats=1, window=16)
    # the flash kernel with its own window first: CUDA's, so no row of figures on a CPU
    assert rows[0] == ("flash, own window 16", "flash_attention", "unsupported")
    # then FlexAttention: the same output as the call (it has no backward pass on a CPU, so no time)
    flex, rows = rows[1], rows[2:]
    assert flex[0].startswith("flex, 0% blocks skipped, max diff ") and flex[1:] == ("flex_attention", "unsupported")
    assert float(flex[0].split("max diff ")[1]) < 1e-5
    variants = {variant for variant, _, _ in rows}
    assert variants == {"as called", "K/V repeated, no GQA flag", "K/V repeated, boolean mask"}
    by_kernel = {(variant, kernel): ms for variant, kernel, ms in rows}
    assert float(by_kernel[("as called", "math")]) > 0  # the math kernel takes every call
    assert by_kernel[("as called", "cudnn")] == "unsupported"  # no cuDNN kernel on a CPU
    assert any(kernel.endswith("(default)") for _, kernel, _ in rows)
    assert attention.main(["--size", "tiny", "--seconds", "2", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "self, masked attention: query [1, 4, 25, 16], key/value [1, 2, 25, 16]" in out
    assert "cross attention" in out
    assert attention.main(["--size", "tiny", "--seconds", "2", "--repeats", "1", "--masked-only"]) == 0
    out = capsys.readouterr().out
    assert "self, masked attention" in out and "flex, 0% blocks skipped" in out and "cross attention" not in out
    assert "flash, own window 16" in out


def test_attention_backends_times_the_masked_call_with_the_window_kernel_against_the_call(monkeypatch):
    """With a kernel that keeps the band (the reference standing in for CUDA's flash kernel), the
    window row gives a time and no difference; a window one key wider shows in its difference."""
    from models.test_attention import band_attention

    attention = bench("attention_backends")
    masked = next(call for call in attention.record_calls("tiny", 1, 2.0, torch.device("cpu"), torch.float32)
                  if call["attn_mask"] is not None)
    monkeypatch.setattr(attention, "windowed_flash_attention", band_attention)
    name, kernel, ms = attention.window_row(masked, torch.device("cpu"), 1, 16)
    assert name.startswith("flash, own window 16, max diff ") and kernel == "flash_attention" and float(ms) > 0
    assert float(name.split("max diff ")[1]) < 1e-5
    monkeypatch.setattr(attention, "windowed_flash_attention", lambda q, k, v, window, scale: band_attention(
        q, k, v, window - 8, scale))
    assert float(attention.window_row(masked, torch.device("cpu"), 1, 16)[0].split("max diff ")[1]) > 1e-3


def test_flex_attentions_block_mask_skips_what_the_sliding_window_leaves_out():
    """At 60 s (750 tokens) the 2B model's window of 128 tokens each way leaves out 20 of the 36
    blocks of 128 x 128 that a dense mask makes a kernel read; below one block nothing is skipped."""
    from torch.nn.attention.flex_attention import create_block_mask

    attention = bench("attention_backends")
    for length, skipped in ((750, 20 / 36), (25, 0.0)):
        index = torch.arange(length)
        allowed = (index[:, None] - index[None, :]).abs() <= 128
        block_mask = create_block_mask(lambda b, h, q, k, allowed=allowed: allowed[q, k], None, None, length, length,
                                       device="cpu")
        assert attention.skipped_share(block_mask, length) == pytest.approx(skipped)


def test_op_count_counts_a_step_on_the_meta_device_and_shows_the_layout_change(capsys):
    """The sequence-major stream (acestep.models.layout) turns the Linears' batched matmuls into
    plain ones: fewer bmm, more mm, fewer kernels; what is left of bmm is attention's math kernel."""
    count = bench("op_count")
    now = count.summary(count.count_step("tiny", 2, 2.0, rank=4))
    before = count.summary(count.count_step("tiny", 2, 2.0, rank=4, diffusers_layout=True))
    assert before["bmm"] > now["bmm"] and now["mm"] > before["mm"]
    assert now["kernels (not views)"] < before["kernels (not views)"] < before["operators"]
    layers = 4  # tiny DiT: per layer self- and cross-attention, each 2 bmm forward, 2 recomputed, 4 backward
    assert now["bmm"] == layers * 2 * 8
    assert count.main(["--size", "tiny", "--batch", "1", "--seconds", "2", "--rank", "4"]) == 0
    assert "kernels (not views)" in capsys.readouterr().out


def test_op_count_counts_each_rms_norm_as_the_one_fused_operator_of_a_cuda_build():
    """acestep.models.norms: each RMSNorm is one `_fused_rms_norm` forward (and recomputed) and one
    backward, where diffusers' forward is eight operators; the counting's stand-in for CUDA's
    dispatch lasts only while it counts."""
    count = bench("op_count")
    fused = count.count_step("tiny", 2, 2.0, rank=4)
    plain = count.count_step("tiny", 2, 2.0, rank=4, diffusers_rms_norm=True)
    norms, layers = 4 * 7 + 1, 4  # 7 per layer (3 on the stream, q/k norms of both attentions), the output norm
    assert fused["_fused_rms_norm"] == norms + layers * 7  # the layers' norms again when recomputed
    assert fused["_fused_rms_norm_backward"] == norms
    assert plain["_fused_rms_norm"] == 0 and plain["pow"] >= norms
    assert count.summary(fused)["kernels (not views)"] < count.summary(plain)["kernels (not views)"] - 5 * norms
    x = torch.randn(2, 3, 8, device="meta", dtype=torch.bfloat16)
    with count.CountOperators() as mode:
        torch.nn.functional.rms_norm(x, (8,), torch.ones(8, device="meta", dtype=torch.bfloat16), 1e-6)
    assert "_fused_rms_norm" not in mode.counts and mode.counts["pow"] == 1  # the meta device decomposes again


def test_op_count_shows_the_casts_diffusers_rope_adds():
    """diffusers' RoPE casts q and k and their rotated halves to fp32 and the result back: three
    copies per call, forward and recomputed (2 self-attention calls per layer), more backward."""
    count = bench("op_count")
    ours = count.summary(count.count_step("tiny", 2, 2.0, rank=4))
    theirs = count.summary(count.count_step("tiny", 2, 2.0, rank=4, diffusers_rope=True))
    assert theirs["copies"] - ours["copies"] >= 3 * 2 * 4 * 2
    assert theirs["kernels (not views)"] > ours["kernels (not views)"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("name", "changed"), [("use_diffusers_rms_norm", 4 * 7 + 1), ("use_diffusers_rope", 4 * 2)])
def test_the_rms_norm_and_rope_variants_put_back_diffusers_arithmetic_with_the_same_prediction(dtype, name, changed):
    """`:diffnorm` gives every RMSNorm of the DiT (7 per layer and the output norm) diffusers'
    forward back, `:diffrope` each attention layer's processor (unplanned here) diffusers' fp32 RoPE; the
    prediction stays what it was, bit for bit in fp32 and to the rounding of bf16, where the
    trainer's RMSNorm rounds once and its RoPE rounds as the upstream model code does."""
    from diffusers.models.normalization import RMSNorm

    from acestep.models.attention import apply_rope
    from acestep.models.config import parse_model_config
    from acestep.models.norms import FusedRMSNorm
    from acestep.training.objective import context_latents

    common, variants = bench("common"), bench("variants")
    config = parse_model_config(common.model_config("tiny"))
    torch.manual_seed(0)
    model = common.random_transformer(config, torch.device("cpu"), dtype)
    inputs = {"hidden_states": torch.randn(2, 50, 64, dtype=dtype), "timestep": torch.full((2,), 0.5, dtype=dtype),
              "timestep_r": torch.full((2,), 0.5, dtype=dtype),
              "encoder_hidden_states": torch.randn(2, 12, model.condition_embedder.in_features, dtype=dtype),
              "context_latents": context_latents(torch.zeros(1, 50, 64), 50, 2).to(dtype)}
    with torch.no_grad():
        trainer = model(**inputs).sample.float()
        assert getattr(variants, name)(model) == changed
        diffusers = model(**inputs).sample.float()
    if name == "use_diffusers_rms_norm":
        assert not any(isinstance(m, FusedRMSNorm) for m in model.modules())
        assert sum(type(m) is RMSNorm for m in model.modules()) == changed
    else:
        assert all(m.processor.rope is not apply_rope for m in model.modules() if hasattr(m, "processor"))
    if dtype == torch.float32:
        assert torch.equal(trainer, diffusers)
    else:
        torch.testing.assert_close(trainer, diffusers, rtol=5e-2, atol=5e-2)
        # (RoPE's rounding does not reach this tiny random model's prediction; tests/models/test_attention.py
        # compares the two RoPEs themselves)
        assert name == "use_diffusers_rope" or not torch.equal(trainer, diffusers)


def test_peft_cast_variant_turns_the_casts_the_trainer_skips_back_on():
    from acestep.training.adapters import add_adapter

    common, variants = bench("common"), bench("variants")
    model = tiny_random_transformer(common)
    adapter = add_adapter(model, "lora", rank=4, alpha=8.0)
    adapter.skip_input_casts()
    layers = [m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled")]
    assert layers and not any(layer.cast_input_dtype_enabled for layer in layers)
    assert variants.use_peft_input_casts(model) == len(layers) == len(adapter.modules)
    assert all(layer.cast_input_dtype_enabled for layer in layers)
    assert [v.flag for v in variants.VARIANTS] == ["difflayout", "diffnorm", "diffrope", "peftcast", "diffckpt",
                                                   "halfckpt", "reentrantckpt", "densewindow", "staticcompile"]


def test_diffusers_checkpointing_variant_puts_back_diffusers_hook_based_checkpointing():
    from acestep.training.recompute import checkpoint_block, enable_recompute

    common, variants = bench("common"), bench("variants")
    model = tiny_random_transformer(common)
    with pytest.raises(ValueError, match="needs gradient checkpointing"):
        variants.use_diffusers_checkpointing(model)
    enable_recompute(model)
    assert model._gradient_checkpointing_func is checkpoint_block
    assert variants.use_diffusers_checkpointing(model) == 1
    assert model.is_gradient_checkpointing and model._gradient_checkpointing_func is not checkpoint_block
    enable_recompute(model, compiled=True)
    model.layers[0].compile(backend="eager")  # compiled blocks checkpoint themselves: diffusers' would be a second
    with pytest.raises(ValueError, match="measures the eager blocks: not with compile"):
        variants.use_diffusers_checkpointing(model)


def test_re_entrant_checkpointing_variant_checkpoints_compiled_blocks_from_outside_as_before():
    from acestep.training.compilation import compile_blocks
    from acestep.training.recompute import RECOMPUTE_FLAG, checkpoints_in_graph, enable_recompute

    common, variants = bench("common"), bench("variants")
    model = tiny_random_transformer(common)
    with pytest.raises(ValueError, match="needs gradient checkpointing"):
        variants.use_re_entrant_checkpointing(model)
    enable_recompute(model, 0.5, compiled=True)
    with pytest.raises(ValueError, match="needs compile on"):
        variants.use_re_entrant_checkpointing(model)
    compile_blocks(model, backend="eager")
    assert variants.use_re_entrant_checkpointing(model) == len(model.layers) // 2  # the ratio kept
    assert not any(checkpoints_in_graph(block) for block in model.layers)
    assert [getattr(block, RECOMPUTE_FLAG) for block in model.layers] == [True] * 2 + [False] * 2


def test_half_checkpointing_variant_checkpoints_the_first_half_of_the_blocks(monkeypatch):
    from acestep.training.adapters import add_adapter
    from acestep.training.recompute import checkpoints_in_graph, enable_recompute

    from training.test_recompute import record_checkpointed

    common, variants = bench("common"), bench("variants")
    model = tiny_random_transformer(common)
    with pytest.raises(ValueError, match="needs gradient checkpointing"):
        variants.use_half_checkpointing(model)
    enable_recompute(model)
    add_adapter(model, "lora", rank=4, alpha=8.0)
    assert variants.use_half_checkpointing(model) == len(model.layers) // 2
    assert not any(checkpoints_in_graph(block) for block in model.layers)  # no block compiled: re-entrant
    checkpointed = record_checkpointed(monkeypatch)
    t = torch.full((1,), 0.5)
    model.train()(hidden_states=torch.randn(1, 8, 64), timestep=t, timestep_r=t,
                  encoder_hidden_states=torch.randn(1, 3, model.condition_embedder.in_features),
                  context_latents=torch.randn(1, 8, 128))
    assert checkpointed == list(model.layers[:len(model.layers) // 2])


def test_dense_window_variant_gives_the_sliding_window_calls_their_mask_back(monkeypatch):
    """Where the plan runs them on the flash kernel with its own window (a CUDA GPU's; set by hand
    here, with the reference standing in for the kernel), the variant turns that off, and the
    calls go back to scaled_dot_product_attention with the dense mask; without it, it refuses."""
    from dataclasses import replace

    from models.test_attention import SdpaCalls, WindowedCalls

    common, variants = bench("common"), bench("variants")
    model = tiny_random_transformer(common).eval()
    with pytest.raises(ValueError, match="needs a plan with sliding-window calls on the flash kernel"):
        variants.use_dense_window_mask(model)
    processors = variants._processors(model)
    for processor in processors:
        processor.plan = replace(processor.plan, window_dtype=torch.float32)
    windowed, sdpa = WindowedCalls(monkeypatch), SdpaCalls(monkeypatch)

    def forward() -> None:
        with torch.no_grad():
            model(hidden_states=torch.randn(1, 80, 64), timestep=torch.full((1,), 0.5),
                  timestep_r=torch.full((1,), 0.5), context_latents=torch.randn(1, 80, 128),
                  encoder_hidden_states=torch.randn(1, 5, model.condition_embedder.in_features))

    forward()
    sliding = model.layer_types.count("sliding_attention")
    assert len(windowed.calls) == sliding and not any(masked for masked, _, _ in sdpa.calls)
    assert variants.use_dense_window_mask(model) == len(processors)
    assert all(processor.plan.window_dtype is None for processor in processors)
    windowed.calls.clear(), sdpa.calls.clear()
    forward()
    assert not windowed.calls and sum(masked for masked, _, _ in sdpa.calls) == sliding


def test_static_compile_variant_compiles_the_blocks_for_the_shapes_they_first_see():
    from torch._dynamo.utils import counters

    from acestep.training.compilation import compile_blocks

    common, variants = bench("common"), bench("variants")
    model = tiny_random_transformer(common).eval()
    with pytest.raises(ValueError, match="needs compile on"):
        variants.use_static_shape_compile(model)
    compile_blocks(model, backend="eager")
    assert variants.use_static_shape_compile(model) == len(model.layers)

    def forward(tokens: int) -> None:
        with torch.no_grad():
            model(hidden_states=torch.randn(1, 8, 64), timestep=torch.full((1,), 0.5), timestep_r=torch.full((1,), 0.5),
                  encoder_hidden_states=torch.randn(1, tokens, model.condition_embedder.in_features),
                  context_latents=torch.randn(1, 8, 128))

    torch._dynamo.reset()
    counters.clear()
    forward(5)
    first = counters["stats"]["unique_graphs"]
    forward(5)
    assert counters["stats"]["unique_graphs"] == first  # the same shapes: nothing new
    forward(7)  # a static graph serves one condition length: another length compiles again
    assert counters["stats"]["unique_graphs"] > first


def test_a_cuda_graphs_cell_trains_with_the_trainers_run_cuda_graphs(tmp_path):
    """`:cudagraphs` is the trainer's own run.cuda_graphs (training_step.py --cuda-graphs), which
    records on a CUDA GPU only: on a CPU the cell stops with the trainer's message."""
    grid, training_step = bench("training_grid"), bench("training_step")
    cell = grid.parse_cell("1x60:compile:cudagraphs")
    assert cell == grid.Cell(1, 60.0, False, True, (), ("cudagraphs",)) and cell.key == "b1-60s-compile-cudagraphs"
    assert "--cuda-graphs" in _cell_command(grid, cell, tmp_path / "c.json")
    assert grid.markdown_table([_grid_row(cell, {"status": "skipped"})]).splitlines()[-1].startswith(
        "| 1 x 60 s (CUDA graphs) | off | on | skipped |")
    from acestep.errors import TrainingError

    with pytest.raises(TrainingError, match="run.cuda_graphs records CUDA graphs, which need a CUDA GPU"):
        training_step.main(["--size", "tiny", "--seconds", "1", "--compile", "--cuda-graphs"])


def test_a_cuda_graphs_cell_whose_graphs_ran_without_cuda_graphs_says_so(capsys):
    """Inductor may run a compiled graph without recording it as a CUDA graph, with only a warning in
    the log: the cell's compile report counts those runs (torch's own counter, bumped by torch's
    own function here) and the grid's status of a `:cudagraphs` cell says so instead of "ok"."""
    from torch._dynamo.utils import counters
    from torch._inductor.cudagraph_utils import log_cudagraph_skip_and_bump_counter

    grid, training_step = bench("training_grid"), bench("training_step")
    counters.clear()
    assert training_step.compile_report()["cudagraph_skips"] == 0
    log_cudagraph_skip_and_bump_counter("skipping cudagraphs due to mutated inputs (1 instances)")
    log_cudagraph_skip_and_bump_counter("skipping cudagraphs due to mutated inputs (1 instances)")
    report = training_step.compile_report()
    assert report["cudagraph_skips"] == 2
    training_step.print_compile_report(report)
    assert "; 2 times a graph ran without CUDA graphs (see \"skipping cudagraphs\" above); longest stages" in \
        capsys.readouterr().out
    rows = []
    for label, status in (("1x60:compile:cudagraphs", "ok"), ("1x60:compile", "ok"),
                          ("1x60:compile:cudagraphs", "oom")):
        cell = grid.parse_cell(label)
        rows.append(_grid_row(cell, {"status": status, "compile_report": report}))
    statuses = [line.split(" | ")[3] for line in grid.markdown_table(rows).splitlines()[2:]]
    assert statuses == ["**ok, 2 without CUDA graphs**", "ok", "**oom**"]


@pytest.mark.parametrize("pair", [("run.gradient_checkpointing=true", {"gradient_checkpointing": True}),
                                  ("optimizer.gradient_accumulation=2", {"gradient_accumulation": 2})],
                         ids=["checkpointing", "accumulation"])
def test_a_cuda_graphs_cell_measures_the_pairs_the_trainer_still_refuses(tmp_path, monkeypatch, pair):
    """The trainer refuses run.cuda_graphs with gradient checkpointing, and with accumulation, until
    a GPU has run the pair: the benchmark is where that is found out, so its session gets both.
    CUDA graphs without compile stay refused."""
    from acestep.errors import ConfigError
    from acestep.training.config import TrainingConfig, apply_overrides

    training_step = bench("training_step")
    override, arguments = pair
    with pytest.raises(ConfigError, match="do not go together yet"):
        apply_overrides(TrainingConfig(), ["run.compile=true", override, "run.cuda_graphs=true"])
    built = []
    monkeypatch.setattr(training_step, "build_session", lambda training, *rest: built.append(training))
    training_step.build_benchmark_session(_tiny_args(compile=True, cuda_graphs=True, **arguments), tmp_path)
    run, optimizer = built[0].run, built[0].optimizer
    assert (run.compile, run.cuda_graphs) == (True, True)
    assert (run.gradient_checkpointing, optimizer.gradient_accumulation) == (
        arguments.get("gradient_checkpointing", False), arguments.get("gradient_accumulation", 1))
    with pytest.raises(SystemExit):
        training_step.main(["--size", "tiny", "--cuda-graphs", "--gradient-checkpointing"])


def test_an_accumulation_cell_steps_the_trainers_optimizer_every_second_batch(tmp_path, monkeypatch, capsys):
    """`:accum2` (`--gradient-accumulation=2`): the timed trainer accumulates two batches for each
    optimizer step (a short group at the end of a round is flushed, as in a run's last batches);
    the figures stay per batch."""
    grid, training_step = bench("training_grid"), bench("training_step")
    _check_setting_cell(grid, tmp_path, "1x60:compile:cudagraphs:accum2", ("cudagraphs", "accum2"),
                        "b1-60s-compile-cudagraphs-accum2", "--gradient-accumulation=2", "(gradient accumulation 2)")
    stepped = []
    original = training_step.Trainer._optimizer_step
    monkeypatch.setattr(training_step.Trainer, "_optimizer_step", lambda self: stepped.append(1) or original(self))
    for accumulation, steps in ((1, 5), (2, 3)):  # 1 warm-up batch, then 1 round of 4: (1) + (2 + 2)
        stepped.clear()
        figures = tmp_path / "accumulation.json"
        assert training_step.main(["--size", "tiny", "--seconds", "1", "--steps", "4", "--rounds", "1", "--warmup",
                                   "1", "--no-reference", "--json", str(figures),
                                   f"--gradient-accumulation={accumulation}"]) == 0
        report = json.loads(figures.read_text())
        assert len(stepped) == steps and report["gradient_accumulation"] == accumulation
        assert report["loops"]["trainer"]["seconds_per_step"] > 0
    assert "gradient accumulation 2 (figures per batch), " in capsys.readouterr().out


def test_a_cell_with_varied_conditions_and_dropout_trains_on_songs_of_different_lengths(tmp_path):
    """`:varied` gives the samples condition lengths from 300 to 500 tokens, so consecutive batches
    differ in shape as in a real run (what CUDA graphs record again); `:dropout` the trainer's
    default adapter dropout; the FLOPs are counted at the mean length."""
    grid, training_step, common = bench("training_grid"), bench("training_step"), bench("common")
    cell = grid.parse_cell("8x60:dropout:compile:varied:cudagraphs")  # any order in, SETTINGS' order out
    assert cell.settings == ("cudagraphs", "varied", "dropout")
    assert cell.label == "8x60:compile:cudagraphs:varied:dropout"
    command = _cell_command(grid, cell, tmp_path / "c.json")
    start = command.index("--cuda-graphs")
    assert command[start:start + 3] == ["--cuda-graphs", "--varied-conditions", "--adapter-dropout"]
    assert grid.markdown_table([_grid_row(cell, {"status": "skipped"})]).splitlines()[-1].startswith(
        "| 8 x 60 s (CUDA graphs) (condition lengths varied) (adapter dropout) | off | on | skipped |")
    lengths = common.varied_condition_lengths(40)
    assert len(set(lengths)) > 20 and min(lengths) >= 300 and max(lengths) <= 500
    figures = tmp_path / "varied.json"
    assert training_step.main(["--size", "tiny", "--batch", "2", "--seconds", "1", "--steps", "2", "--rounds", "1",
                               "--warmup", "1", "--no-reference", "--varied-conditions", "--adapter-dropout",
                               "--json", str(figures)]) == 0
    report = json.loads(figures.read_text())
    samples = training_step.condition_lengths(_tiny_args(batch=2, varied_conditions=True))
    assert report["condition_token_range"] == [min(samples), max(samples)] and len(set(samples)) > 1
    assert report["condition_tokens"] == round(sum(samples) / len(samples)) and report["adapter_dropout"] == 0.1
    assert report["loops"]["trainer"]["seconds_per_step"] > 0
    with pytest.raises(ValueError, match="3 condition lengths for 2 samples"):
        common.write_samples(tmp_path / "bad", 2, 25, 8, [300, 400, 500])


def test_a_cell_without_the_finite_check_times_the_trainer_without_its_per_step_sync(tmp_path, monkeypatch, capsys):
    """`:nosync` (`--no-finite-check`) measures what the trainer's one host-device sync per step
    costs: the timed trainer takes every gradient for finite without reading it from the device,
    and trains its steps as before; without the flag the check reads each step's norm."""
    grid, training_step = bench("training_grid"), bench("training_step")
    _check_setting_cell(grid, tmp_path, "1x60:compile:cudagraphs:nosync", ("cudagraphs", "nosync"),
                        "b1-60s-compile-cudagraphs-nosync", "--no-finite-check", "(no finite-gradient sync)")
    read = []
    original = training_step.Trainer._gradient_is_finite
    monkeypatch.setattr(training_step.Trainer, "_gradient_is_finite",
                        staticmethod(lambda norm: read.append(norm) or original(norm)))
    for flags, reads in (([], 3), (["--no-finite-check"], 0)):  # 1 warm-up step, then 1 round of 2 steps
        read.clear()
        figures = tmp_path / "sync.json"
        assert training_step.main(["--size", "tiny", "--seconds", "1", "--steps", "2", "--rounds", "1", "--warmup",
                                   "1", "--no-reference", "--json", str(figures), *flags]) == 0
        report = json.loads(figures.read_text())
        assert len(read) == reads and report["finite_check"] == (not flags)
        assert report["loops"]["trainer"]["seconds_per_step"] > 0
    assert "no finite-gradient check, " in capsys.readouterr().out


def test_profile_step_prints_the_top_ops_and_the_timings_of_its_variants(capsys):
    profile_step = bench("profile_step")
    assert profile_step.main(["--size", "tiny", "--seconds", "1", "--steps", "1", "--rows", "5",
                              "--gradient-checkpointing", "--trainer"]) == 0
    out = capsys.readouterr().out
    for name in ("bare step", "trainer's loop"):  # the trainer's own loop profiled after the bare step
        assert re.search(rf"{name}: profiled 1 steps: [\d.]+ ms/step wall", out), name
    assert out.count("Self CPU") >= 2
    for name in ("step (bare)", "forward only, no grad", "forward only, adapter disabled",
                 "step without checkpointing"):
        assert re.search(rf"  {re.escape(name)} +[\d.]+ ms", out), name
    assert profile_step.main(["--size", "tiny", "--seconds", "1", "--steps", "1", "--rows", "5", "--no-variants"]) == 0
    out = capsys.readouterr().out
    assert "bare step: profiled 1 steps" in out and "trainer's loop" not in out and "forward only" not in out


def test_host_overhead_times_each_way_of_running_the_step(capsys):
    host = bench("host_overhead")
    # aot_eager: the same graphs and guards as inductor, without generating CPU kernels (a minute here)
    assert host.main(["--layers", "1", "--rounds", "1", "--compile", "--backend", "aot_eager"]) == 0
    rows = {line[:36].strip(): line[36:].split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert list(rows) == ["no checkpointing", "checkpointing, diffusers' default", "checkpointing, the trainer's",
                          "the trainer's, PEFT casts on", "and diffusers' RoPE",
                          "the trainer's, compiled (dynamic)", "the trainer's, compiled (static)",
                          "compiled, re-entrant checkpoint"]
    compiled = {name: rows.pop(name) for name in list(rows) if "compiled" in name}
    assert all(values[1] == "-" and float(values[0]) > 0 for values in compiled.values())
    # compiling makes the first step the slow one
    assert all(float(values[2]) > 10 * float(values[0]) / 1000 for values in compiled.values())
    operators = {name: int(values[1]) for name, values in rows.items()}
    assert operators["checkpointing, the trainer's"] > operators["no checkpointing"]  # the recomputation
    assert operators["the trainer's, PEFT casts on"] > operators["checkpointing, the trainer's"]  # the casts
    assert operators["and diffusers' RoPE"] > operators["the trainer's, PEFT casts on"]  # RoPE's fp32 casts


def test_data_loading_times_each_batch_of_a_training_epoch_after_the_first(capsys, monkeypatch):
    loading = bench("data_loading")
    read = []
    original = loading.CroppedSamples.__getitem__
    monkeypatch.setattr(loading.CroppedSamples, "__getitem__",
                        lambda self, key: read.append(key) or original(self, key))
    times = loading.batch_seconds(batch=3, seconds=1.0, songs=7, song_frames=60, tokens=5, width=16, epochs=2)
    assert len(times) == 2 * (3 - 1) and all(t > 0 for t in times)  # batches of 3, 3 and 1; the first not timed
    assert sorted(read) == [(epoch, p) for epoch in (0, 1) for p in range(7)]  # every sample once per epoch
    assert loading.main(["--batch", "2", "--seconds", "1", "--songs", "4", "--song-seconds", "3", "--tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("batch 2 x 1 s crops of 3 s songs, 5 condition tokens")


def test_gpu_perf_default_cells_are_cells_the_grid_runs_and_its_header_describes():
    """A misspelt cell in gpu_perf.sh would cost a lent GPU's session: every default goal and grid
    cell parses, is written as the grid labels it, and is named in the script's header and in
    RESULTS.md's Reproduce section."""
    grid = bench("training_grid")
    text = (ROOT / "benchmarks" / "gpu_perf.sh").read_text()
    header = text.split("\nset -u\n")[0]
    reproduce = (ROOT / "benchmarks" / "RESULTS.md").read_text().split("## Reproduce")[1]
    for name in ("GOALS", "CELLS"):
        cells = re.search(rf"^{name}=\${{{name}-([^}}]*)}}$", text, re.MULTILINE).group(1).split(",")
        assert [grid.parse_cell(cell).label for cell in cells] == cells
        assert [cell for cell in cells if cell not in header] == []
        assert [cell for cell in cells if cell not in reproduce] == []
