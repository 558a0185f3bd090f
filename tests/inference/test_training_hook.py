"""Previews during training (`acestep/inference/training_hook.py` and its hook in the loop): the
files and events appear, and the run ends bit-identical to the same run without previews."""

import json
import re

import pytest
import soundfile as sf
import torch
from PIL import Image
from safetensors.torch import load_file

from acestep.errors import TrainingError
from acestep.inference.effect import distance_summary, effect_summary, spectral_difference_db
from acestep.training import checkpoint as ckpt
from acestep.training.loop import train
from training.conftest import write_tensors_dir
from training.test_loop import make_config

PREVIEW = ("run.preview_caption=mystyle, lofi hip hop beat", "run.preview_seconds=0.4",
           "run.preview_strengths=[0, 0.5, 1]", "run.preview_seed=3")


def events(run_dir):
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("quantization", ["none", "nf4"])  # nf4: PEFT's layers over bitsandbytes' 4-bit ones
def test_previews_leave_training_bit_identical_and_are_listed(tmp_path, turbo_dit, quantization):
    tensors = write_tensors_dir(tmp_path / "tensors", turbo_dit, 5)
    # adapter dropout 0.1 draws from the global RNG and runs only in train mode: a preview that
    # left a draw, the eval mode or a changed adapter scale behind would change the weights.
    common = ("run.epochs=2", "optimizer.gradient_accumulation=2", "run.save_every_epochs=0",
              f"model.quantization={quantization}")
    plain = train(make_config(tmp_path / "off", tensors, turbo_dit, *common))
    dtype = torch.get_default_dtype()
    previewed = train(make_config(tmp_path / "on", tensors, turbo_dit, *common, *PREVIEW,
                                  "run.preview_every_steps=2", "run.preview_every_epochs=1"))
    assert torch.get_default_dtype() == dtype
    a, b = (load_file(r.run_dir / "final" / "adapter_model.safetensors") for r in (plain, previewed))
    assert plain.step == previewed.step == 6
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    curve = [(e["step"], e["loss"]) for e in events(plain.run_dir) if e["type"] == "log"]
    assert [(e["step"], e["loss"]) for e in events(previewed.run_dir) if e["type"] == "log"] == curve

    previews = [e for e in events(previewed.run_dir) if e["type"] == "preview"]
    # every 2 steps (2, 4, 6) and every epoch (steps 3 and 6): step 6 once
    assert [e["step"] for e in previews] == [2, 3, 4, 6]
    assert [e["epoch"] for e in previews] == [0, 0, 1, 1]
    for event in previews:
        names = [f"previews/step-{event['step']:06d}/strength-{s}.{ext}" for s in ("0", "0.5", "1")
                 for ext in ("wav", "png")]
        assert event["files"] == names
        for name in names:
            assert (previewed.run_dir / name).stat().st_size > 0
        assert Image.open(previewed.run_dir / names[1]).size == (1 + 10 * 1920 // 512, 128)
        # the adapter effect of 0.5 and 1 against 0, in the event, the message and the folder's record
        folder = previewed.run_dir / f"previews/step-{event['step']:06d}"
        audio = {s: sf.read(folder / f"strength-{s}.wav")[0].T for s in ("0", "0.5", "1")}
        assert list(event["effect_db"]) == ["0.5", "1"] and event["effect_db"]["1"] > 0
        for strength in ("0.5", "1"):
            assert spectral_difference_db(audio[strength], audio["0"]) == pytest.approx(event["effect_db"][strength],
                                                                                         abs=0.05)
        assert f"; adapter effect {effect_summary(event['effect_db'])}; latent distance to the songs " \
               f"{distance_summary(event['songs_distance'])}" in event["message"]
        record = json.loads((folder / "preview.json").read_text())
        assert record["effect_db"] == event["effect_db"] and record["step"] == event["step"]
        assert list(record["songs_distance"]) == ["0", "0.5", "1"]
        assert record["songs_distance"] == event["songs_distance"]
        assert record["strengths"] == [0.0, 0.5, 1.0] and record["seed"] == 3
        assert record["files"] == ["strength-0.wav", "strength-0.5.wav", "strength-1.wav"]
    assert not any(e["type"] == "warning" for e in events(previewed.run_dir))
    assert not (plain.run_dir / "previews").exists()


def test_with_a_moving_average_previews_render_the_average(tmp_path, turbo_dit, monkeypatch):
    from acestep.export import load_adapter
    from acestep.inference import training_hook
    from acestep.models import load_acestep

    rendered = {}
    sample = training_hook.PreviewRenderer.latents

    def recording(self, transformer, request, strength):
        rendered[strength] = {n: p.detach().clone() for n, p in transformer.named_parameters() if "lora_" in n}
        return sample(self, transformer, request, strength=strength)

    monkeypatch.setattr(training_hook.PreviewRenderer, "latents", recording)
    tensors = write_tensors_dir(tmp_path / "tensors", turbo_dit, 4)
    result = train(make_config(tmp_path, tensors, turbo_dit, "run.epochs=1", "data.batch_size=2",
                               "optimizer.ema_decay=0.5", *PREVIEW, "run.preview_every_epochs=1"))
    # the preview at the end of the last epoch has what final/ has: the average, not the weights
    model = load_acestep(turbo_dit, dtype=torch.float32, components=("transformer",)).transformer
    load_adapter(model, result.run_dir / "final")
    final = {n: p.detach() for n, p in model.named_parameters() if "lora_" in n}
    assert rendered[1.0].keys() == final.keys()
    assert all(torch.equal(rendered[1.0][n], final[n]) for n in final)
    trained = ckpt.read_checkpoint(ckpt.latest_checkpoint(result.run_dir))["adapter"]  # the weights as they trained
    assert trained.keys() == final.keys() and not all(torch.equal(trained[n], final[n]) for n in final)
    assert all(torch.equal(rendered[0.5][n], final[n]) for n in final)  # one average for every strength


def test_an_adapter_that_learned_the_songs_brings_the_previews_closer_to_them(tmp_path, turbo_dit, monkeypatch):
    """End to end: training on songs whose latents share a per-channel pattern moves what the
    sampler makes at strength 1 towards it, and the previews say so."""
    from safetensors.torch import save_file

    from acestep.inference import training_hook
    from acestep.inference.effect import latent_profile, profile_distance

    tensors = write_tensors_dir(tmp_path / "tensors", turbo_dit, 4, frames=(24, 24))
    pattern = 1.5 * torch.sin(torch.arange(64) * 0.7)
    songs = []
    for i, path in enumerate(sorted(tensors.glob("sample*.safetensors"))):
        sample = load_file(path)
        sample["target_latents"] = pattern + 0.3 * torch.randn(24, 64, generator=torch.Generator().manual_seed(i))
        save_file(sample, path)
        songs.append(sample["target_latents"].numpy())
    sampled, sample = {}, training_hook.PreviewRenderer.latents

    def recording(self, transformer, request, strength):
        sampled[strength] = sample(self, transformer, request, strength=strength)
        return sampled[strength]

    monkeypatch.setattr(training_hook.PreviewRenderer, "latents", recording)
    result = train(make_config(tmp_path, tensors, turbo_dit, "run.epochs=150", "data.batch_size=4", "optimizer.lr=1e-2",
                               "adapter.rank=8", "objective.cfg_dropout=0", "adapter.dropout=0",
                               "optimizer.scheduler=constant", "run.save_every_epochs=0",
                               "run.preview_caption=mystyle, lofi", "run.preview_seconds=0.96",
                               "run.preview_every_epochs=150"))
    preview = next(e for e in events(result.run_dir) if e["type"] == "preview")
    distance = preview["songs_distance"]
    assert distance["1"] < 0.9 * distance["0"]  # 1.38 -> 1.18 here
    for strength in (0.0, 1.0):  # the distances are those of the sampled latents to the songs' latents
        expected = profile_distance(latent_profile([sampled[strength][0].numpy()]), latent_profile(songs))
        assert distance[f"{strength:g}"] == pytest.approx(expected, abs=1e-4)
    assert preview["message"].endswith(f"; latent distance to the songs strength 0: {distance['0']:.3f}, "
                                       f"strength 1: {distance['1']:.3f} ({1 - distance['1'] / distance['0']:.0%} "
                                       "closer than the base model)")
    assert json.loads((result.run_dir / "previews/step-000150/preview.json").read_text())["songs_distance"] == distance


def test_a_preview_that_fails_is_a_warning_and_training_goes_on(tmp_path, turbo_dit, monkeypatch):
    import errno

    save, calls = Image.Image.save, []

    def full_disk_once(self, *args, **kwargs):  # the first spectrogram finds the disk full
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", full_disk_once)
    tensors = write_tensors_dir(tmp_path / "tensors", turbo_dit, 4)
    result = train(make_config(tmp_path, tensors, turbo_dit, "run.epochs=2", *PREVIEW, "run.preview_every_epochs=1"))
    log = events(result.run_dir)
    warning = next(e for e in log if e["type"] == "warning")
    assert warning["step"] == 4 and warning["message"] == (
        f"preview at step 4 failed (PreviewError: {result.run_dir}/previews/step-000004/strength-0.png: cannot write "
        "the preview (the disk is full)); training goes on")
    assert [e["step"] for e in log if e["type"] == "preview"] == [8] and log[-1]["type"] == "done"
    assert (result.run_dir / "final" / "adapter_model.safetensors").is_file()


def test_a_missing_preview_model_stops_the_run_at_its_start(tmp_path, turbo_dit):
    alone = tmp_path / "models"
    alone.mkdir()
    (alone / turbo_dit.name).symlink_to(turbo_dit, target_is_directory=True)  # no vae/ beside it
    tensors = write_tensors_dir(tmp_path / "tensors", alone / turbo_dit.name, 2)
    config = make_config(tmp_path, tensors, alone / turbo_dit.name, *PREVIEW, "run.preview_every_steps=1")
    with pytest.raises(TrainingError, match="Previews are on .* vae cannot be found"):
        train(config)
    log = events(tmp_path / "runs" / "run")
    assert log[-1]["type"] == "error" and not any(e["type"] == "log" for e in log)


@pytest.mark.parametrize("overrides, fragment", [
    (["run.preview_every_epochs=1"], "run.preview_caption is required when previews are on"),
    (["run.preview_strengths=[]"], "run.preview_strengths must be one or more distinct numbers from 0 to 2"),
    (["run.preview_strengths=[0, 0]"], "distinct"),
    (["run.preview_strengths=[2.5]"], "from 0 to 2"),
    (["run.preview_language=english"], "run.preview_language must be a language code"),
    (["run.preview_seconds=0"], "run.preview_seconds must be more than 0"),
])
def test_preview_settings_are_checked(overrides, fragment):
    from acestep.errors import ConfigError
    from acestep.training.config import TrainingConfig, apply_overrides

    with pytest.raises(ConfigError, match=fragment):
        apply_overrides(TrainingConfig(), ["data.tensors_dir=/t", *overrides])
    on = apply_overrides(TrainingConfig(),
                         ["data.tensors_dir=/t", "run.preview_every_steps=5", "run.preview_caption=x"])
    assert on.run.preview_strengths == [0.0, 1.0] and on.run.preview_seconds == 10.0


def test_the_request_carries_the_prompt_and_sampler_options_of_the_config():
    from types import SimpleNamespace

    from acestep.inference.preview import PreviewRequest
    from acestep.inference.training_hook import TrainingPreviews
    from acestep.training.config import TrainingConfig, apply_overrides

    config = apply_overrides(TrainingConfig(), [
        "data.tensors_dir=/t", *PREVIEW, "run.preview_lyrics=la la", "run.preview_language=ja", "run.preview_bpm=90",
        "run.preview_key=Am", "run.preview_time_signature=6/8", "run.preview_steps=12", "run.preview_shift=2.5",
        "run.preview_guidance_scale=4", "run.preview_guidance=cfg"])
    request = TrainingPreviews(SimpleNamespace(config=config), emit=None).request()
    # key and time signature in the form the dataset's prompts use ("Am" -> "A minor", "6/8" -> "6")
    assert request == PreviewRequest(caption="mystyle, lofi hip hop beat", lyrics="la la", language="ja", bpm=90.0,
                                     keyscale="A minor", timesignature="6", duration=0.4, seed=3, steps=12, shift=2.5,
                                     guidance_scale=4.0, guidance="cfg")
    default = TrainingPreviews(SimpleNamespace(config=TrainingConfig()), emit=None).request()
    assert (default.bpm, default.keyscale, default.timesignature) == (None, "", "")  # N/A in the prompt
    assert (default.steps, default.shift, default.guidance_scale, default.guidance) == (None, None, None, "apg")


def test_previews_render_with_the_prompt_and_sampler_options_and_record_them(tmp_path, base_checkpoints,
                                                                             monkeypatch):
    from acestep.inference import training_hook

    requests, sample = [], training_hook.PreviewRenderer.latents

    def recording(self, transformer, request, strength):
        requests.append(request)
        return sample(self, transformer, request, strength=strength)

    monkeypatch.setattr(training_hook.PreviewRenderer, "latents", recording)
    dit = base_checkpoints / "acestep-v15-base"  # a base model: any steps and shift, guidance
    tensors = write_tensors_dir(tmp_path / "tensors", dit, 2)
    result = train(make_config(tmp_path, tensors, dit, "run.epochs=1", *PREVIEW, "run.preview_every_epochs=1",
                               "run.preview_strengths=[0, 1]", "run.preview_bpm=90", "run.preview_key=C# minor",
                               "run.preview_time_signature=3/4", "run.preview_steps=3", "run.preview_shift=2",
                               "run.preview_guidance_scale=3", "run.preview_guidance=cfg"))
    assert not any(e["type"] == "warning" and "preview" in e["message"] for e in events(result.run_dir))
    assert [(r.bpm, r.keyscale, r.timesignature, r.steps, r.shift, r.guidance_scale, r.guidance) for r in requests] \
        == [(90.0, "C# minor", "3", 3, 2.0, 3.0, "cfg")] * 2
    record = json.loads(next((result.run_dir / "previews").glob("step-*/preview.json")).read_text())
    assert {key: record[key] for key in ("bpm", "key", "time_signature", "steps", "shift", "guidance_scale",
                                         "guidance")} == {"bpm": 90.0, "key": "C# minor", "time_signature": "3",
                                                          "steps": 3, "shift": 2.0, "guidance_scale": 3.0,
                                                          "guidance": "cfg"}


def test_the_record_holds_the_model_s_defaults_for_unset_sampler_options(tmp_path, turbo_dit):
    tensors = write_tensors_dir(tmp_path / "tensors", turbo_dit, 2)
    result = train(make_config(tmp_path, tensors, turbo_dit, "run.epochs=1", *PREVIEW, "run.preview_every_epochs=1"))
    record = json.loads(next((result.run_dir / "previews").glob("step-*/preview.json")).read_text())
    assert (record["bpm"], record["key"], record["time_signature"]) == (None, "", "")
    assert (record["steps"], record["shift"], record["guidance_scale"], record["guidance"]) == (8, 3.0, 1.0, "none")


@pytest.mark.parametrize("overrides, fragment", [
    (["run.preview_guidance_scale=7"], re.escape(
        "run.preview_guidance_scale cannot be rendered by this run's turbo model (the one data.tensors_dir was "
        "preprocessed with): turbo checkpoints are guidance-distilled and sample without CFG; guidance_scale 7.0 "
        "is not supported (leave it unset or 1)")),
    (["run.preview_steps=20"], "run.preview_steps cannot be rendered by this run's turbo model .*exactly 8 steps"),
    (["run.preview_steps=8", "run.preview_shift=2.5"],
     "run.preview_steps and run.preview_shift cannot be rendered .*shift 1, 2 or 3"),
])
def test_sampler_options_a_turbo_model_cannot_render_stop_the_run_before_the_model_loads(
        tmp_path, turbo_dit, monkeypatch, overrides, fragment):
    from acestep.errors import ConfigError
    from acestep.training import session

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(session, "load_transformer", no_loading)
    tensors = write_tensors_dir(tmp_path / "tensors", turbo_dit, 2)
    config = make_config(tmp_path, tensors, turbo_dit, *PREVIEW, "run.preview_every_steps=1", *overrides)
    with pytest.raises(ConfigError, match=fragment):
        train(config)
    assert not (tmp_path / "runs").exists()  # refused before the run folder is made


def test_the_sampler_check_applies_to_turbo_models_with_previews_on():
    from acestep.errors import ConfigError
    from acestep.inference.training_hook import check_preview_sampling
    from acestep.training.config import TrainingConfig, apply_overrides

    guided = ["data.tensors_dir=/t", "run.preview_caption=x", "run.preview_guidance_scale=7", "run.preview_steps=20"]
    on = apply_overrides(TrainingConfig(), [*guided, "run.preview_every_epochs=1"])
    for variant in ("base", "sft", "xl-base", ""):  # "": a manifest that does not say; the previews warn if need be
        check_preview_sampling(on.run, variant)
    with pytest.raises(ConfigError, match="run.preview_steps and run.preview_guidance_scale cannot be rendered by "
                                          "this run's xl-turbo model"):
        check_preview_sampling(on.run, "xl-turbo")
    check_preview_sampling(apply_overrides(TrainingConfig(), guided).run, "turbo")  # previews off: not used
    unset = apply_overrides(TrainingConfig(), ["data.tensors_dir=/t", "run.preview_caption=x",
                                               "run.preview_every_epochs=1", "run.preview_guidance_scale=1",
                                               "run.preview_shift=2"])
    check_preview_sampling(unset.run, "turbo")  # scale 1 (no guidance) and shift 2 are what turbo takes
