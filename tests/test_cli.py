"""`acestep-trainer`: each command does its job and a user error exits 1 with one line."""

import os
import subprocess
import sys
from pathlib import Path

from acestep.cli import main


def test_tiny_checkpoint_then_models_then_inspect(tmp_path, capsys):
    assert main(["tiny-checkpoint", str(tmp_path / "ck")]) == 0
    assert main(["models", "--checkpoints-dir", str(tmp_path / "ck")]) == 0
    listing = capsys.readouterr().out
    assert "acestep-v15-turbo" in listing and "[turbo]" in listing and "text_encoder" in listing
    assert main(["inspect", "acestep-v15-turbo", "--checkpoints-dir", str(tmp_path / "ck"), "--dtype", "fp32"]) == 0
    report = capsys.readouterr().out
    assert "Variant:      turbo" in report
    assert "logit-normal(mu=-0.4, sigma=1.0)" in report
    assert "silence_latent (1, 15000, 64)" in report


def test_tiny_checkpoint_refuses_to_overwrite(tmp_path, capsys):
    (tmp_path / "vae").mkdir()
    assert main(["tiny-checkpoint", str(tmp_path)]) == 1
    assert "pass --overwrite" in capsys.readouterr().err


def test_inspect_missing_checkpoint_exits_1_with_the_fix(tmp_path, capsys):
    assert main(["inspect", "acestep-v15-sft", "--checkpoints-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Model 'acestep-v15-sft' not found")
    assert "acestep-trainer download acestep-v15-sft" in err


def test_download_offline_exits_1(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["download", "vae", "--checkpoints-dir", str(tmp_path)]) == 1
    assert "Could not download ACE-Step/Ace-Step1.5/vae" in capsys.readouterr().err


def test_download_list_names_every_official_model(capsys):
    assert main(["download", "--list"]) == 0
    out = capsys.readouterr().out
    assert "ACE-Step/acestep-v15-xl-turbo" in out and "ACE-Step/Ace-Step1.5/vae" in out


def test_commands_keep_torch_compile_kernels_in_the_project_unless_told_otherwise(capsys, monkeypatch, tmp_path):
    from acestep.environment.location import compile_cache_dir, project_root

    assert compile_cache_dir() == project_root() / "cache" / "torch-compile"  # /cache/ is git-ignored
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "restored after the test")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    assert main(["download", "--list"]) == 0
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(compile_cache_dir())
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # the user's choice stays
    assert main(["download", "--list"]) == 0
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path)


def test_console_script_help_lists_commands():
    command = [sys.executable, "-m", "acestep.cli", "--help"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    for command in ("models", "download", "inspect", "tiny-checkpoint"):
        assert command in out


def write_tone(path, seconds, rate=48000, channels=2):
    import numpy as np
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * t)
    sf.write(path, np.stack([tone] * channels, axis=1), rate)


def test_split_build_report_on_a_folder(tmp_path, capsys):
    import json

    library = tmp_path / "library"
    library.mkdir()
    write_tone(library / "long.wav", 65)
    write_tone(library / "short.flac", 12, rate=44100, channels=1)
    (library / "long.wav.txt").write_text("[Verse]\nhello\n")
    (library / "broken.wav").write_text("not audio")

    assert main(["split", str(library), str(tmp_path / "parts"), "--segment", "30"]) == 2  # broken.wav failed
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == [
        "long_part01.wav", "long_part02.wav", "short_part01.wav"]  # 65 s: the 5 s tail is dropped
    summary = capsys.readouterr().out  # the summary and its failures on stdout, in order, as the UI's log shows it
    assert "Split 2 of 3 file(s) into 3 segment(s)" in summary and "failed: " in summary and "broken.wav" in summary
    assert "lyrics are not copied: a segment holds part of the song" in summary  # long.wav.txt: lyrics only

    dataset = library / "dataset.json"
    assert main(["build", str(library), "--out", str(dataset), "--tag", "mystyle"]) == 2
    data = json.loads(dataset.read_text())
    assert data["trigger_tag"] == "mystyle" and data["tag_position"] == "prepend"
    assert sorted(s["audio"] for s in data["samples"]) == ["long.wav", "short.flac"]
    assert main(["build", str(library), "--out", str(dataset)]) == 1  # never overwrites edits silently
    assert "pass --overwrite" in capsys.readouterr().err

    assert main(["report", str(dataset), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["count"] == 2


def test_train_export_merge_from_the_command_line(tmp_path, capsys, tiny_checkpoints):
    import json

    from acestep.training.config import TrainingConfig, apply_overrides, save_config

    from training.conftest import write_tensors_dir

    dit = tiny_checkpoints / "acestep-v15-turbo"
    tensors = write_tensors_dir(tmp_path / "tensors", dit, 4)
    config = apply_overrides(TrainingConfig(), [f"data.tensors_dir={tensors}", f"model.checkpoint={dit}",
                                                f"run.output_dir={tmp_path / 'runs'}", "run.name=cli", "run.epochs=1",
                                                "adapter.rank=4", "adapter.alpha=8", "optimizer.warmup_steps=0"])
    save_config(config, tmp_path / "run.toml")
    assert main(["train", "--config", str(tmp_path / "run.toml")]) == 0
    run = tmp_path / "runs" / "cli"
    assert main(["export", str(run), "--out", str(tmp_path / "export")]) == 0
    printed = capsys.readouterr().out
    assert "peft" in printed and "comfyui" in printed and "reloaded: max difference" in printed
    assert main(["export", str(run), "--out", str(tmp_path / "export")]) == 1  # not empty
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["merge", str(run / "final"), "--checkpoint", str(dit), "--out", str(tmp_path / "merged" / "m"),
                 "--strength", "0.5"]) == 0
    assert json.loads((tmp_path / "merged" / "m" / "merge_info.json").read_text())["strength"] == 0.5
    # without --checkpoint: the base the run trained on, from the run folder or from an exported file
    comfyui = next((tmp_path / "export").glob("*_comfyui.safetensors"))
    for index, adapter in enumerate((run, comfyui)):
        assert main(["merge", str(adapter), "--out", str(tmp_path / "merged" / f"d{index}"), "--shared", "skip"]) == 0
        assert json.loads((tmp_path / "merged" / f"d{index}" / "merge_info.json").read_text())["base"] == str(dit)


def test_caption_with_signal_analysis_labels_a_folder(tmp_path, real_loops, capsys):
    import json
    import shutil

    folder = tmp_path / "loops"
    folder.mkdir()
    shutil.copy(real_loops["loop_amen_full"], folder / "amen.flac")
    (folder / "broken.wav").write_text("not audio")
    arguments = ["caption", str(folder), "--labeller", "analysis", "--cache-dir", str(tmp_path / "cache"),
                 "--csv", str(folder / "labels.csv")]
    assert main(arguments) == 2  # broken.wav failed, the rest was labelled
    out = capsys.readouterr().out
    assert "1 labelled" in out and "failed: " in out and "broken.wav" in out
    sidecar = json.loads((folder / "amen.flac.json").read_text())
    assert 80 <= sidecar["bpm"] <= 200 and "analysis" in sidecar["labelled_by"]
    assert (folder / "labels.csv").read_text().startswith("file,caption")
    assert main(arguments) == 2
    assert "0 labelled, 1 from the cache" in capsys.readouterr().out


def test_gpu_command_prints_the_monitor_preset_and_estimate(capsys):
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "train_lora.toml"
    assert main(["gpu", "--config", str(example), "--set", "data.batch_size=1"]) == 0
    out = capsys.readouterr().out
    assert "no NVIDIA GPU" in out and "Recommended preset: quick_test" in out
    assert "Estimated peak GPU memory" in out and "batch 1 x 60 s" in out


def test_train_with_a_preset_applies_it_under_the_set_overrides(tmp_path, tiny_checkpoints):
    from acestep.training.config import TrainingConfig, apply_overrides, load_config, save_config

    from training.conftest import write_tensors_dir

    dit = tiny_checkpoints / "acestep-v15-turbo"
    tensors = write_tensors_dir(tmp_path / "tensors", dit, 2)
    config = apply_overrides(TrainingConfig(), [f"data.tensors_dir={tensors}", f"model.checkpoint={dit}",
                                                f"run.output_dir={tmp_path / 'runs'}", "run.name=p"])
    save_config(config, tmp_path / "run.toml")
    assert main(["train", "--config", str(tmp_path / "run.toml"), "--preset", "quick_test",
                 "--set", "run.max_steps=1", "--set", "adapter.rank=2", "--set", "run.accelerator=cpu"]) == 0
    used = load_config(tmp_path / "runs" / "p" / "config.toml")
    assert used.adapter.rank == 2 and used.adapter.alpha == 32.0  # --set over the preset, preset over the file
    assert used.run.epochs == 10 and used.run.max_steps == 1


def test_train_without_a_config_file_starts_from_the_defaults(tmp_path, tiny_checkpoints, capsys, monkeypatch):
    from acestep.training.config import TrainingConfig, load_config

    from training.conftest import write_tensors_dir

    dit = tiny_checkpoints / "acestep-v15-turbo"
    tensors = write_tensors_dir(tmp_path / "tensors", dit, 2)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--preset", "quick_test"]) == 1  # nothing says what to train on
    assert "--set data.tensors_dir=DIR" in capsys.readouterr().err
    assert main(["train", "--preset", "quick_test", "--set", f"model.checkpoint={dit}", "--set", "run.name=d"]) == 1
    assert "data.tensors_dir is required" in capsys.readouterr().err
    assert main(["train", "--preset", "quick_test", "--set", "data.tensors_dir=tensors",
                 "--set", f"model.checkpoint={dit}", "--set", "run.name=d", "--set", "run.max_steps=1",
                 "--set", "run.accelerator=cpu"]) == 0
    used = load_config(tmp_path / "runs" / "d" / "config.toml")  # run.output_dir's default, under the cwd
    assert used.data.tensors_dir == str(tensors)  # the run folder's config holds absolute paths
    assert used.adapter.rank == 16 and used.run.epochs == 10  # the preset's
    assert used.optimizer.weight_decay == TrainingConfig().optimizer.weight_decay  # a default


def test_the_bitsandbytes_4bit_kernel_warning_stays_out_of_the_output():
    """bitsandbytes (imported by the estimate and the optimizers) warns about an optional 4-bit CPU
    kernel on CPUs with AVX512-BF16; the commands keep that line out of what users read."""
    example = Path(__file__).resolve().parents[1] / "examples" / "train_lora.toml"
    result = subprocess.run([sys.executable, "-m", "acestep.cli", "gpu", "--config", str(example)],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "Estimated peak GPU memory" in result.stdout
    assert "gemm_4bit_forward" not in result.stdout + result.stderr


def test_torch_s_weight_norm_deprecation_stays_out_of_the_output(tmp_path):
    """diffusers builds the VAE with torch's deprecated weight_norm; commands that build one keep
    torch's FutureWarning (addressed to diffusers) out of what users read."""
    result = subprocess.run([sys.executable, "-m", "acestep.cli", "tiny-checkpoint", str(tmp_path / "models")],
                            capture_output=True, text=True)
    assert result.returncode == 0 and (tmp_path / "models" / "vae" / "config.json").is_file()
    assert "FutureWarning" not in result.stderr and "is deprecated" not in result.stderr


def test_every_argument_of_every_command_has_help():
    """`acestep-trainer COMMAND --help` explains every path, flag and option it takes."""
    import argparse

    from acestep.cli import build_parser

    commands = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    missing = [f"{name} {action.dest}" for name, parser in commands.choices.items() for action in parser._actions
               if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()]
    assert missing == []


def test_tags_adds_and_removes_in_the_dataset_file(tmp_path, capsys):
    import json

    from acestep.dataset import Dataset, Sample, save_dataset

    dataset = tmp_path / "songs.json"
    save_dataset(Dataset("songs", [Sample(str(tmp_path / f"{n}.wav"), caption="piano") for n in "abc"]), dataset)
    assert main(["tags", str(dataset), "--add", "lofi", "--samples", "1,3"]) == 0
    assert capsys.readouterr().out.strip() == f"Added 'lofi' in 2 of 2 sample(s). Saved {dataset}."
    assert [s["caption"] for s in json.loads(dataset.read_text())["samples"]] == ["piano, lofi", "piano",
                                                                               "piano, lofi"]
    before = dataset.read_bytes()
    assert main(["tags", str(dataset), "--remove", "rock", "--field", "both"]) == 0
    assert "Removed 'rock' in 0 of 3 sample(s). Nothing to save in" in capsys.readouterr().out
    assert dataset.read_bytes() == before
    assert main(["tags", str(dataset), "--add", "x", "--samples", "4"]) == 1
    assert capsys.readouterr().err.strip() == "error: samples: '4' is outside 1-3"
    assert main(["tags", str(tmp_path / "missing.json"), "--add", "x"]) == 1
    assert "missing.json" in capsys.readouterr().err



def test_a_file_where_a_folder_should_be_is_one_line_naming_it(tmp_path, capsys):
    in_the_way = tmp_path / "notadir"
    in_the_way.write_text("")
    assert main(["tiny-checkpoint", str(in_the_way / "ck")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {in_the_way / 'ck'}: Not a directory; a part of this path is a file")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_split_settings_out_of_range_are_one_line(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    assert main(["split", str(tmp_path / "in"), str(tmp_path / "out"), "--min-tail", "45"]) == 1
    assert capsys.readouterr().err == (
        "error: the shortest last part must be from 0 s to the segment length (30 s), got 45 s\n")
