"""`acestep-trainer preview` as the CLI will call it: `add_preview_arguments` + `run_preview`."""

import argparse
import json

import numpy as np
import pytest
import soundfile as sf

from acestep.inference import PreviewError
from acestep.inference.cli import add_preview_arguments, parse_strengths, run_preview
from acestep.inference.effect import distance_summary, spectral_difference_db
from acestep.inference.render import RECORD_NAME
from acestep.training.adapters import add_adapter, save_adapter

from .conftest import adapted, load_transformer


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_preview_arguments(parser)
    return parser.parse_args(list(argv))


def test_preview_command_renders_each_strength_of_a_saved_adapter(tmp_path, turbo_dit, capsys):
    _, adapter = adapted(turbo_dit)
    folder = save_adapter(adapter, tmp_path / "adapter")
    common = ["--checkpoint", str(turbo_dit), "--caption", "mystyle, lofi beat", "--duration", "0.4",
              "--device", "cpu", "--out", str(tmp_path / "out")]
    assert run_preview(parse(*common, "--adapter", str(folder), "--strengths", "0,1")) == 0
    audio = {s: sf.read(tmp_path / "out" / f"strength-{s}.wav")[0] for s in ("0", "1")}
    assert audio["0"].shape == (19_200, 2) and np.abs(audio["0"] - audio["1"]).max() > 1e-2
    assert (tmp_path / "out" / "strength-1.png").is_file()
    printed = capsys.readouterr().out
    assert "strength-1" in printed  # the last line is what a job's message shows
    assert printed.splitlines()[-1] == f"Done: 2 render(s) of 0.4 s in {tmp_path / 'out'}"
    record = json.loads((tmp_path / "out" / RECORD_NAME).read_text())  # what was rendered, for the Listen tab
    effect = record.pop("effect_db")
    assert record.pop("songs") is None and record.pop("songs_distance") == {}  # no --songs
    assert record == {"caption": "mystyle, lofi beat", "lyrics": "", "language": "en", "bpm": None, "key": "",
                      "time_signature": "", "duration": 0.4, "seed": 0, "steps": 8, "shift": 3.0,
                      "guidance_scale": 1.0, "guidance": "none", "checkpoint": str(turbo_dit), "variant": "turbo",
                      "quantization": "none", "adapter": str(folder), "strengths": [0.0, 1.0],
                      "files": ["strength-0.wav", "strength-1.wav"]}
    # the adapter effect, measured on the renders: the same figure from the 16-bit files
    assert list(effect) == ["1"] and effect["1"] > 0.1
    assert spectral_difference_db(audio["1"].T, audio["0"].T) == pytest.approx(effect["1"], abs=0.05)
    assert f"Adapter effect (mean log-mel difference): strength 1: {effect['1']:.2f} dB from the base model" in printed
    with pytest.raises(PreviewError, match="already holds strength-0.wav.*--overwrite"):
        run_preview(parse(*common, "--adapter", str(folder)))
    assert run_preview(parse(*common, "--adapter", str(folder), "--overwrite")) == 0
    # without an adapter: the base model once; strength 0 of the adapter is exactly that
    assert run_preview(parse(*common)) == 0
    assert np.array_equal(sf.read(tmp_path / "out" / "base.wav")[0], audio["0"])
    record = json.loads((tmp_path / "out" / RECORD_NAME).read_text())
    assert record["adapter"] is None and record["strengths"] == [] and record["files"] == ["base.wav"]
    assert record["effect_db"] == {} and record["songs"] is None and record["songs_distance"] == {}
    with pytest.raises(PreviewError, match="--strengths needs --adapter"):
        run_preview(parse(*common, "--strengths", "0.5"))


def test_an_untrained_adapter_has_no_effect_and_without_strength_0_none_is_measured(tmp_path, turbo_dit, capsys):
    transformer = load_transformer(turbo_dit)
    folder = save_adapter(add_adapter(transformer, "lora", rank=4, alpha=8.0, dropout=0.0), tmp_path / "fresh")
    common = ["--checkpoint", str(turbo_dit), "--caption", "mystyle, lofi beat", "--duration", "0.4",
              "--device", "cpu", "--adapter", str(folder)]
    assert run_preview(parse(*common, "--strengths", "0,0.5,1", "--out", str(tmp_path / "a"))) == 0
    assert json.loads((tmp_path / "a" / RECORD_NAME).read_text())["effect_db"] == {"0.5": 0.0, "1": 0.0}  # LoRA B = 0
    assert "strength 0.5: 0.00 dB, strength 1: 0.00 dB from the base model" in capsys.readouterr().out
    assert run_preview(parse(*common, "--strengths", "1", "--out", str(tmp_path / "b"))) == 0
    assert json.loads((tmp_path / "b" / RECORD_NAME).read_text())["effect_db"] == {}
    assert "Adapter effect" not in capsys.readouterr().out


def test_with_songs_each_render_measures_its_latent_distance_to_them(tmp_path, turbo_dit, capsys):
    from acestep.errors import PreprocessError
    from training.conftest import write_tensors_dir

    songs = write_tensors_dir(tmp_path / "tensors", turbo_dit, 3)
    _, adapter = adapted(turbo_dit)
    folder = save_adapter(adapter, tmp_path / "adapter")
    common = ["--checkpoint", str(turbo_dit), "--caption", "mystyle, lofi beat", "--duration", "0.4",
              "--device", "cpu", "--songs", str(songs)]
    assert run_preview(parse(*common, "--adapter", str(folder), "--out", str(tmp_path / "a"))) == 0
    record = json.loads((tmp_path / "a" / RECORD_NAME).read_text())
    distance = record["songs_distance"]
    assert record["songs"] == str(songs) and list(distance) == ["0", "1"] and distance["0"] != distance["1"]
    assert f"Latent distance to the songs of {songs}: {distance_summary(distance)}" in capsys.readouterr().out
    # the base model alone: the same noise and model as strength 0, so the same distance
    assert run_preview(parse(*common, "--out", str(tmp_path / "b"))) == 0
    assert json.loads((tmp_path / "b" / RECORD_NAME).read_text())["songs_distance"] == {"0": distance["0"]}
    with pytest.raises(PreprocessError, match=r"manifest\.json does not exist: .* is not a preprocessed tensors"):
        run_preview(parse(*common[:-1], str(tmp_path / "a"), "--out", str(tmp_path / "c")))
    assert not (tmp_path / "c").exists()  # refused before anything was rendered


def test_preview_of_an_adapter_renders_on_the_model_it_was_trained_on(tmp_path, turbo_dit, capsys):
    _, adapter = adapted(turbo_dit)
    run = tmp_path / "run"
    save_adapter(adapter, run / "final", {"checkpoint": str(turbo_dit)})
    common = ["--caption", "mystyle, lofi beat", "--duration", "0.4", "--device", "cpu"]
    assert run_preview(parse(*common, "--adapter", str(run), "--strengths", "1", "--out", str(tmp_path / "a"))) == 0
    assert f"with {turbo_dit} (turbo) and {run / 'final'}" in capsys.readouterr().out
    # the key and time signature are written into the prompt as the dataset writes them
    assert run_preview(parse(*common, "--adapter", str(run), "--strengths", "1", "--key", "Am", "--time-signature",
                             "4/4", "--out", str(tmp_path / "k"))) == 0
    record = json.loads((tmp_path / "k" / RECORD_NAME).read_text())
    assert (record["key"], record["time_signature"]) == ("A minor", "4")
    explicit = ["--checkpoint", str(turbo_dit), "--adapter", str(run / "final"), "--strengths", "1"]
    assert run_preview(parse(*common, *explicit, "--out", str(tmp_path / "b"))) == 0
    assert np.array_equal(sf.read(tmp_path / "a" / "strength-1.wav")[0], sf.read(tmp_path / "b" / "strength-1.wav")[0])
    with pytest.raises(PreviewError, match="give --checkpoint .*or --adapter"):
        run_preview(parse(*common, "--out", str(tmp_path / "c")))


def test_preview_renders_on_an_nf4_base_and_refuses_lokr_there(tmp_path, turbo_dit, capsys):
    _, adapter = adapted(turbo_dit)
    folder = save_adapter(adapter, tmp_path / "adapter")
    common = ["--checkpoint", str(turbo_dit), "--caption", "mystyle, lofi beat", "--duration", "0.4",
              "--device", "cpu", "--adapter", str(folder), "--strengths", "0,1"]
    assert run_preview(parse(*common, "--out", str(tmp_path / "full"))) == 0
    assert run_preview(parse(*common, "--out", str(tmp_path / "nf4"), "--quantization", "nf4")) == 0
    assert f"with {turbo_dit} (turbo, NF4) and {folder}" in capsys.readouterr().out
    assert json.loads((tmp_path / "nf4" / RECORD_NAME).read_text())["quantization"] == "nf4"
    for name in ("strength-0", "strength-1"):
        full, nf4 = (sf.read(tmp_path / kind / f"{name}.wav")[0] for kind in ("full", "nf4"))
        assert nf4.shape == full.shape and np.isfinite(nf4).all() and not np.array_equal(nf4, full)
    strength_1 = sf.read(tmp_path / "nf4" / "strength-1.wav")[0]
    assert np.abs(strength_1 - sf.read(tmp_path / "nf4" / "strength-0.wav")[0]).max() > 1e-2  # the adapter acts

    _, lokr = adapted(turbo_dit, kind="lokr")
    lokr_folder = save_adapter(lokr, tmp_path / "lokr")
    with pytest.raises(PreviewError, match="is a LoKr adapter; --quantization nf4 renders LoRA and DoRA"):
        run_preview(parse(*common[:-4], "--adapter", str(lokr_folder), "--out", str(tmp_path / "x"),
                          "--quantization", "nf4"))


@pytest.mark.parametrize("text", ["", "a,b", "1,1", "-1"])
def test_bad_strength_lists_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_strengths(text)
    assert parse_strengths("0, 0.5,1") == [0.0, 0.5, 1.0]


def test_guidance_on_a_turbo_model_is_refused_before_the_dit_loads(tmp_path, turbo_dit, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the DiT was loaded")

    monkeypatch.setattr("acestep.training.quantization.load_transformer", never)
    with pytest.raises(PreviewError, match="guidance-distilled and sample without CFG; guidance_scale 7.0"):
        run_preview(parse("--checkpoint", str(turbo_dit), "--caption", "x", "--duration", "0.4", "--device", "cpu",
                          "--guidance-scale", "7", "--out", str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()
