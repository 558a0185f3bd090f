"""The preview renderer and its files (`acestep/inference/preview.py`, `render.py`) on the tiny models."""

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from acestep.inference import PreviewError, PreviewRenderer, PreviewRequest, write_preview
from acestep.inference.preview import sampling_settings
from acestep.inference.render import HOP, N_MELS
from acestep.inference.strength import peft_layers

from .conftest import load_transformer

HOP_SAMPLES = 1920


def test_render_gives_stereo_48k_of_the_asked_length(turbo_renderer, turbo_dit):
    transformer = load_transformer(turbo_dit)
    for seconds in (2.0, 1.03):
        audio = turbo_renderer.render(transformer, PreviewRequest("lofi hip hop beat", duration=seconds))
        assert audio.dtype == np.float32 and audio.shape[0] == 2
        assert 0 <= audio.shape[1] - seconds * 48_000 < HOP_SAMPLES and audio.shape[1] % HOP_SAMPLES == 0
        assert np.isfinite(audio).all()
        assert np.abs(audio).max() == pytest.approx(10 ** (-1 / 20), rel=1e-5)  # official -1 dBFS peak


def test_render_is_a_function_of_the_seed_and_leaves_global_state(turbo_renderer, turbo_dit):
    transformer = load_transformer(turbo_dit).train()
    request = PreviewRequest("blues boogie woogie piano", duration=1.0, seed=7)
    rng, dtype = torch.get_rng_state(), torch.get_default_dtype()
    first = turbo_renderer.render(transformer, request)
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_default_dtype() == dtype
    assert all(module.training for module in transformer.modules())
    assert np.array_equal(first, turbo_renderer.render(transformer, request))
    other = turbo_renderer.render(transformer, PreviewRequest("blues boogie woogie piano", duration=1.0, seed=8))
    assert np.abs(first - other).max() > 1e-3


def test_lyrics_and_caption_change_the_condition(turbo_renderer):
    instrumental = turbo_renderer.condition(PreviewRequest("warm jazz ballad"))
    sung = turbo_renderer.condition(PreviewRequest("warm jazz ballad", lyrics="the night is young"))
    other = turbo_renderer.condition(PreviewRequest("rock anthem with distorted guitars"))
    assert instrumental.shape[0] == 1 and instrumental.shape[2] == 64
    assert sung.shape != instrumental.shape or not torch.equal(sung, instrumental)
    assert other.shape != instrumental.shape or not torch.equal(other, instrumental)


def test_strength_zero_is_the_adapter_off_render_and_differs_from_one(turbo_renderer, turbo_dit, turbo_lora):
    transformer, _ = turbo_lora
    request = PreviewRequest("energetic electronic dance music", duration=1.0, seed=3)
    scales = [dict(layer.scaling) for layer in peft_layers(transformer)]
    renders = turbo_renderer.render_ab(transformer, request, strengths=(0.0, 0.5, 1.0))
    base = turbo_renderer.render(load_transformer(turbo_dit), request)  # the same weights without an adapter
    assert np.array_equal(renders[0.0], base)
    assert np.abs(renders[1.0] - renders[0.0]).max() > 1e-2
    assert np.abs(renders[0.5] - renders[0.0]).max() > 1e-3 and np.abs(renders[0.5] - renders[1.0]).max() > 1e-3
    assert np.array_equal(renders[1.0], turbo_renderer.render(transformer, request))  # 1 = as it is
    assert [dict(layer.scaling) for layer in peft_layers(transformer)] == scales
    assert not any(layer.disable_adapters for layer in peft_layers(transformer))


def test_base_variant_samples_with_guidance(base_checkpoints):
    dit = base_checkpoints / "acestep-v15-base"
    renderer = PreviewRenderer(dit, device="cpu", dtype="fp32")
    transformer = load_transformer(dit)
    request = dict(caption="ambient cinematic soundscape", duration=1.0, steps=4)
    apg = renderer.latents(transformer, PreviewRequest(**request))  # default: guidance 7, APG
    cfg = renderer.latents(transformer, PreviewRequest(**request, guidance="cfg"))
    unguided = renderer.latents(transformer, PreviewRequest(**request, guidance_scale=1.0))
    assert torch.isfinite(apg).all() and torch.isfinite(cfg).all()
    assert (apg - unguided).abs().max() > 1e-3 and (cfg - unguided).abs().max() > 1e-3
    assert (apg - cfg).abs().max() > 1e-3
    with pytest.raises(PreviewError, match="does not belong to"):
        renderer.render(_turbo_like(dit), PreviewRequest(**request))


def _turbo_like(base_dit):
    transformer = load_transformer(base_dit)
    transformer.register_to_config(is_turbo=True)
    return transformer


@pytest.mark.parametrize("request_fields, fragment", [
    ({"caption": "  "}, "caption is empty"),
    ({"caption": "x", "duration": 0.0}, "duration must be more than 0"),
    ({"caption": "x", "lyrics": "la la", "instrumental": True}, "instrumental=True"),
    ({"caption": "x", "guidance_scale": 7.0}, "guidance-distilled"),
    ({"caption": "x", "steps": 20}, "exactly 8 steps"),
    ({"caption": "x", "seed": -1}, "seed must be"),
])
def test_bad_requests_are_refused_with_the_field(turbo_renderer, turbo_dit, request_fields, fragment):
    with pytest.raises(PreviewError, match=fragment):
        turbo_renderer.render(load_transformer(turbo_dit), PreviewRequest(**request_fields))


def test_strength_without_an_adapter_is_refused(turbo_renderer, turbo_dit):
    with pytest.raises(PreviewError, match="no adapter"):
        turbo_renderer.render(load_transformer(turbo_dit), PreviewRequest("x", duration=1.0), strength=0.5)


def test_write_preview_writes_a_wav_and_a_spectrogram(tmp_path):
    t = np.arange(48_000 * 2) / 48_000
    tone = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 3000 * t)]).astype(np.float32) * 0.5
    wav, png = write_preview(tone, tmp_path / "out", "strength-1")
    assert (wav.name, png.name) == ("strength-1.wav", "strength-1.png")
    data, rate = sf.read(wav, always_2d=True)
    assert rate == 48_000 and data.shape == (96_000, 2)
    assert np.abs(data.T - tone).max() < 1e-4  # 16-bit
    image = Image.open(png)
    assert image.format == "PNG" and image.mode == "RGB" and image.size == (1 + 96_000 // HOP, N_MELS)
    pixels = np.asarray(image).astype(float).sum(axis=(1, 2))
    # the 440 Hz and 3 kHz tones light up two rows near the bottom; the top (high frequencies) stays dark
    assert pixels[-N_MELS // 2:].max() > 2 * pixels[: N_MELS // 4].mean()
    assert not list((tmp_path / "out").glob(".*.tmp"))


@pytest.mark.parametrize("audio, name, fragment", [
    (np.zeros((3, 100), np.float32), "a", "channels"),
    (np.full((2, 100), np.nan, np.float32), "a", "NaN"),
    (np.zeros((2, 100), np.float32), "../a", "plain file name"),
])
def test_write_preview_refuses_bad_input(tmp_path, audio, name, fragment):
    with pytest.raises(PreviewError, match=fragment):
        write_preview(audio, tmp_path, name)


def test_write_preview_says_when_the_disk_is_full(tmp_path, monkeypatch):
    import errno

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    with pytest.raises(PreviewError, match=r"strength-1\.png: cannot write the preview \(the disk is full\)"):
        write_preview(np.zeros((2, 4800), np.float32), tmp_path, "strength-1")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["strength-1.wav"]  # no temporary file left


@pytest.mark.parametrize(("is_turbo", "scale", "method", "used"), [
    (True, None, "cfg", "none"),  # turbo samples without guidance, whatever method was asked for
    (False, None, "apg", "apg"),  # base/sft: 7 by default
    (False, 7.5, "cfg", "cfg"),
    (False, 1.0, "cfg", "none"),  # a scale of 1 or less: no guidance
])
def test_the_record_names_the_guidance_that_sampled(is_turbo, scale, method, used):
    settings = sampling_settings(PreviewRequest(caption="x", guidance_scale=scale, guidance=method), is_turbo)
    assert settings.guidance == method and settings.guidance_used == used
