"""The whole workflow on an XL-style checkpoint (decoder wider than the condition encoder, q width
unlike the hidden size), from the command line: build, preprocess, train on a 4-bit base, export
to every format (each reloaded and compared), merge, and render with and without the 4-bit base."""

import shutil

import torch
from models.test_xl import XL_CONFIG
from training.test_loop import make_config

from acestep.cli import main
from acestep.models import load_acestep
from acestep.models.tiny import write_dit_checkpoint
from acestep.training.loop import train

XL_NAME = "acestep-v15-xl-turbo"


def test_build_preprocess_train_nf4_export_merge_and_preview_an_xl_model(tmp_path, tiny_checkpoints, real_loops,
                                                                         capsys):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    for shared in ("vae", "Qwen3-Embedding-0.6B"):  # the XL models share the VAE and the text encoder
        (checkpoints / shared).symlink_to(tiny_checkpoints / shared, target_is_directory=True)
    generator = torch.Generator().manual_seed(7)
    write_dit_checkpoint(checkpoints / XL_NAME, XL_CONFIG, generator, torch.randn(1, 300, 64, generator=generator))
    songs = tmp_path / "songs"
    songs.mkdir()
    for name in ("drum_roll", "guit_e_slide"):
        shutil.copy(real_loops[name], songs / f"{name}.flac")

    dataset, tensors = tmp_path / "songs.json", tmp_path / "tensors"
    assert main(["build", str(songs), "--out", str(dataset), "--tag", "xlstyle", "--instrumental"]) == 0
    assert main(["preprocess", "--dataset", str(dataset), "--checkpoint", XL_NAME, "--checkpoints-dir",
                 str(checkpoints), "--out", str(tensors), "--max-duration", "3"]) == 0
    result = train(make_config(tmp_path, tensors, checkpoints / XL_NAME, "model.quantization=nf4", "run.epochs=2"))
    assert result.status == "completed" and result.step == 4
    run = result.run_dir

    exports = tmp_path / "exports"
    assert main(["export", str(run), "--out", str(exports), "--format", "peft", "--format", "comfyui",
                 "--format", "diffusers", "--checkpoints-dir", str(checkpoints)]) == 0  # each reloaded and compared
    assert len(list(exports.rglob("*.safetensors"))) == 3

    merged = tmp_path / "merged"
    assert main(["merge", str(run), "--out", str(merged), "--dtype", "fp32", "--checkpoints-dir",
                 str(checkpoints)]) == 0
    merged_bundle = load_acestep(merged, dtype=torch.float32, components=("transformer",))
    base = load_acestep(checkpoints / XL_NAME, dtype=torch.float32, components=("transformer",))
    q = "layers.0.self_attn.to_q.weight"
    assert merged_bundle.variant == "xl-turbo"
    assert not torch.equal(merged_bundle.transformer.state_dict()[q], base.transformer.state_dict()[q])

    capsys.readouterr()
    for quantization in ("none", "nf4"):
        assert main(["preview", "--adapter", str(run), "--caption", "xlstyle, drums", "--duration", "0.4",
                     "--device", "cpu", "--quantization", quantization, "--checkpoints-dir", str(checkpoints),
                     "--out", str(tmp_path / f"preview-{quantization}")]) == 0
    assert all((tmp_path / f"preview-{q}" / "strength-1.wav").is_file() for q in ("none", "nf4"))
    assert "(xl-turbo, NF4)" in capsys.readouterr().out
