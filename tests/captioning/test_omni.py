"""Tests for acestep/captioning/omni.py on tiny random Qwen2.5-Omni checkpoints written by
acestep/captioning/tiny.py: the real loader, the real processor on real music, greedy
generation, parsing, and the download / memory / unload behaviour. No downloads."""

import gc
import json
import shutil
import weakref
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from transformers import Qwen2_5OmniThinkerForConditionalGeneration

from acestep.audio.io import load_audio
from acestep.captioning.labels import Labels
from acestep.captioning.omni import (CAPTIONER_REPO, SYSTEM_PROMPT, TRANSCRIBER_REPO, OmniLabeller, missing_files)
from acestep.captioning.tiny import write_tiny_omni, write_tiny_omni_checkpoints
from acestep.errors import AudioError, CheckpointError, CheckpointNotFoundError, EnvironmentProblem

OUTPUTS = Path(__file__).parent / "data" / "outputs"


@pytest.fixture(scope="module")
def omni_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("omni_checkpoints")
    write_tiny_omni_checkpoints(root)
    return root


@pytest.fixture(scope="module")
def captioner(omni_root) -> OmniLabeller:
    """Named by its HF id: found in the checkpoints directory without a download."""
    return OmniLabeller("captioner", CAPTIONER_REPO, device="cpu", max_new_tokens=8, checkpoints_dir=omni_root)


@pytest.fixture(scope="module")
def transcriber(omni_root) -> OmniLabeller:
    return OmniLabeller("transcriber", omni_root / "acestep-transcriber", device="cpu", max_new_tokens=8)


def _mono(path: Path, seconds: float = 240.0) -> np.ndarray:
    return load_audio(path, sample_rate=16_000, max_seconds=seconds).mean(axis=0)


def _answer_with(labeller: OmniLabeller, monkeypatch, text: str, end: bool = True) -> None:
    """Make the loaded model 'say' `text`: generate returns the prompt, then the tokens of `text`
    from the checkpoint's own tokenizer, then <|im_end|>. Decoding and parsing stay real."""
    tokenizer = labeller.processor.tokenizer
    answer = tokenizer(text, add_special_tokens=False)["input_ids"]
    if end:
        answer = answer + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    calls = []

    def generate(**inputs):
        calls.append(inputs)
        assert inputs["do_sample"] is False and inputs["max_new_tokens"] == labeller.max_new_tokens
        assert tokenizer.convert_tokens_to_ids("<|im_end|>") in inputs["eos_token_id"]
        return torch.cat([inputs["input_ids"], torch.tensor([answer])], dim=1)

    monkeypatch.setattr(labeller.model, "generate", generate)
    return calls


def test_tiny_checkpoint_has_the_layout_of_the_real_repos(omni_root):
    folder = omni_root / "acestep-captioner"
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_omni"
    assert {"thinker_config", "talker_config"} <= set(config)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    names = set(index["weight_map"])
    assert "thinker.lm_head.weight" in names and any(n.startswith("thinker.audio_tower.") for n in names)
    assert any(n.startswith("thinker.model.layers.") for n in names) and any(n.startswith("talker.") for n in names)
    assert missing_files(folder) == []
    for name in ("preprocessor_config.json", "chat_template.json", "generation_config.json", "tokenizer.json"):
        assert (folder / name).is_file()


def test_captioner_runs_end_to_end_on_real_music(captioner, real_songs):
    labels = captioner.label(real_songs[0])
    assert isinstance(captioner.model, Qwen2_5OmniThinkerForConditionalGeneration)
    assert not hasattr(captioner.model, "talker"), "only the thinker is loaded"
    assert captioner.model.dtype == torch.float32 and captioner.model.device.type == "cpu"
    assert isinstance(labels, Labels) and labels.source == "captioner"
    # A random model writes junk; whatever it wrote is the raw text, and greedy decoding repeats it.
    text, _finished = captioner.generate(_mono(real_songs[0]))
    assert labels.raw == text
    assert captioner.label(real_songs[0]).raw == text
    assert labels.parsed or labels.caption == ""


def test_transcriber_runs_end_to_end_on_recorded_loops(transcriber, real_loops):
    labels = transcriber.label(real_loops["guit_e_slide"])  # mono FLAC, 44.1 kHz
    assert labels.source == "transcriber"
    assert isinstance(labels.raw, str)
    assert labels == transcriber.label(real_loops["guit_e_slide"])


def test_audio_goes_through_the_checkpoints_processor(captioner, real_songs):
    captioner.load()
    tokenizer = captioner.processor.tokenizer
    audio_token = tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    for clip, seconds in zip(real_songs, (6, 12), strict=True):
        inputs = captioner.prepare_inputs(_mono(clip))
        frames = seconds * 100  # Whisper features: 10 ms hop
        assert tuple(inputs["input_features"].shape) == (1, 128, 30_000)  # the 300 s window of the checkpoint
        assert int(inputs["feature_attention_mask"].sum()) == frames
        # One token per 40 ms, as Qwen2_5OmniProcessor counts them.
        assert int((inputs["input_ids"] == audio_token).sum()) == ((frames - 1) // 2 + 1 - 2) // 2 + 1
    prompt = tokenizer.decode(inputs["input_ids"][0])
    assert prompt.startswith(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n")
    assert "*Task* Describe this audio in detail\n<|audio_bos|><|AUDIO|>" in prompt
    assert prompt.endswith("<|audio_eos|><|im_end|>\n<|im_start|>assistant\n")


def test_captioner_output_is_parsed_through_the_pipeline(captioner, real_songs, monkeypatch):
    captioner.load()
    text = (OUTPUTS / "caption_prose_metadata.txt").read_text(encoding="utf-8").strip()
    calls = _answer_with(captioner, monkeypatch, text)
    labels = captioner.label(real_songs[1])
    assert len(calls) == 1 and "input_features" in calls[0] and "feature_attention_mask" in calls[0]
    assert labels.raw == text
    assert (labels.bpm, labels.keyscale, labels.timesignature, labels.language) == (122.0, "F# minor", "4", "es")
    assert labels.caption.startswith("An energetic Latin pop song") and labels.parsed
    assert labels.notes == []


def test_transcriber_output_is_parsed_through_the_pipeline(transcriber, real_loops, monkeypatch):
    transcriber.load()
    expected = json.loads((OUTPUTS / "expected.json").read_text(encoding="utf-8"))["lyrics_chinese.txt"]
    _answer_with(transcriber, monkeypatch, (OUTPUTS / "lyrics_chinese.txt").read_text(encoding="utf-8"))
    labels = transcriber.label(real_loops["loop_tabla"])
    assert labels.lyrics == expected["lyrics"]
    assert labels.language == "zh" and labels.instrumental is False and labels.parsed


def test_a_checkpoint_without_generation_config_still_stops_at_im_end(omni_root, tmp_path, real_loops, monkeypatch):
    copy = tmp_path / "transcriber"
    shutil.copytree(omni_root / "acestep-transcriber", copy)
    (copy / "generation_config.json").unlink()
    labeller = OmniLabeller("transcriber", copy, device="cpu", max_new_tokens=64)
    labeller.load()
    _answer_with(labeller, monkeypatch, "# Languages\nen\n\n# Lyrics\n[Verse]\nOne more time")  # asserts the end token
    labels = labeller.label(real_loops["drum_roll"])
    assert labels.lyrics == "[Verse]\nOne more time" and labels.notes == []


def test_an_answer_cut_at_max_new_tokens_is_noted(transcriber, real_loops, monkeypatch):
    transcriber.load()
    _answer_with(transcriber, monkeypatch, "# Lyrics\n[Verse]\nla la la la la la", end=False)  # 27 tokens, no end
    labels = transcriber.label(real_loops["drum_roll"])
    assert any("max_new_tokens=8" in note for note in labels.notes)


def test_only_the_first_max_seconds_are_heard(omni_root, real_songs, monkeypatch):
    labeller = OmniLabeller("captioner", "acestep-captioner", device="cpu", max_seconds=5, max_new_tokens=4,
                            checkpoints_dir=omni_root)
    labels = labeller.label(real_songs[1])  # 12 s
    assert labels.notes[0] == "only the first 5 s of 12 s were heard"


def test_bad_audio_raises_before_any_model_is_loaded(omni_root, tmp_path):
    labeller = OmniLabeller("captioner", CAPTIONER_REPO, device="cpu", checkpoints_dir=omni_root)
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("these are my notes, not audio")
    with pytest.raises(AudioError):
        labeller.label(not_audio)
    assert labeller.model is None


def test_unload_frees_the_model_and_label_reloads(omni_root, real_loops):
    labeller = OmniLabeller("transcriber", TRANSCRIBER_REPO, device="cpu", max_new_tokens=4, checkpoints_dir=omni_root)
    first = labeller.label(real_loops["drum_roll"])
    model = weakref.ref(labeller.model)
    labeller.unload()
    gc.collect()
    assert labeller.model is None and labeller.processor is None
    assert model() is None, "nothing else holds the unloaded model"
    assert labeller.label(real_loops["drum_roll"]) == first
    assert labeller.model is not None


def test_hf_id_is_accepted_without_a_path_check_and_offline_names_size_and_command(tmp_path, monkeypatch, real_loops):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    labeller = OmniLabeller("captioner", CAPTIONER_REPO, device="cpu", checkpoints_dir=tmp_path)
    assert labeller.fingerprint().startswith("captioner-")
    with pytest.raises(CheckpointNotFoundError) as info:
        labeller.label(real_loops["drum_roll"])
    message = str(info.value)
    assert CAPTIONER_REPO in message and "about 22 GB" in message
    assert f"hf download {CAPTIONER_REPO} --local-dir {tmp_path / 'acestep-captioner'}" in message
    other = OmniLabeller("transcriber", "someone/my-transcriber", device="cpu", checkpoints_dir=tmp_path)
    with pytest.raises(CheckpointNotFoundError, match="size unknown"):
        other.load()


def test_folder_names_incomplete_folders_and_other_models(omni_root, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert OmniLabeller("transcriber", "acestep-transcriber", checkpoints_dir=omni_root).model_folder() == \
        omni_root / "acestep-transcriber"
    copy = tmp_path / "acestep-captioner"
    shutil.copytree(omni_root / "acestep-captioner", copy)
    (copy / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointNotFoundError, match="missing model-00002-of-00002.safetensors"):
        OmniLabeller("captioner", copy, device="cpu").load()
    with pytest.raises(CheckpointNotFoundError, match=r"incomplete: missing model-00002-of-00002\.safetensors"):
        OmniLabeller("captioner", "acestep-captioner", device="cpu", checkpoints_dir=tmp_path).load()
    other = write_tiny_omni(tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "qwen3"}))
    with pytest.raises(CheckpointError, match="model_type 'qwen3'"):
        OmniLabeller("captioner", other, device="cpu").load()


def test_fingerprint_names_the_model_and_the_settings_that_change_output(omni_root):
    def key(**changes):
        settings = {"kind": "captioner", "model": CAPTIONER_REPO, "device": "cpu", "checkpoints_dir": omni_root,
                    **changes}
        return OmniLabeller(**settings).fingerprint()

    base = key()
    assert base == key(), "stable"
    assert base == key(model=omni_root / "acestep-captioner"), "the same folder by id or by path"
    assert base == key(attention="eager"), "the attention kernel does not change the text"
    different = [key(max_seconds=120), key(max_new_tokens=512), key(dtype="bf16"), key(kind="transcriber"),
                 key(model=omni_root / "acestep-transcriber")]
    assert len({base, *different}) == 1 + len(different)


def test_reduce_memory_halves_the_audio_then_offloads():
    labeller = OmniLabeller("captioner", CAPTIONER_REPO, device="cuda", max_seconds=240)
    steps = []
    while labeller.reduce_memory():
        steps.append((labeller.max_seconds, labeller.cpu_offload))
    assert steps == [(120, False), (60, False), (30, False), (30, True)]
    on_cpu = OmniLabeller("captioner", CAPTIONER_REPO, device="cpu", max_seconds=100)
    assert [on_cpu.reduce_memory() for _ in range(4)] == [True, True, False, False]
    assert on_cpu.max_seconds == 30 and not on_cpu.cpu_offload


def test_weights_that_do_not_fit_turn_on_offloading_first(omni_root, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Qwen2_5OmniThinkerForConditionalGeneration, "from_pretrained", out_of_memory)
    labeller = OmniLabeller("captioner", CAPTIONER_REPO, device="cuda", checkpoints_dir=omni_root)
    with pytest.raises(torch.OutOfMemoryError):
        labeller.load()
    assert labeller.reduce_memory() is True
    assert labeller.cpu_offload is True and labeller.max_seconds == 240
    assert labeller.model is None


def test_settings_are_checked(omni_root):
    assert OmniLabeller("captioner", CAPTIONER_REPO, device="cpu").torch_dtype() == torch.float32
    assert OmniLabeller("captioner", CAPTIONER_REPO, device="cpu").attention_implementation() == "sdpa"
    assert OmniLabeller("captioner", CAPTIONER_REPO, device="cpu", dtype="bf16").torch_dtype() == torch.bfloat16
    with pytest.raises(EnvironmentProblem, match="CUDA GPUs only"):
        OmniLabeller("captioner", CAPTIONER_REPO, device="cpu",
                     attention="flash_attention_2").attention_implementation()
    if not torch.cuda.is_available():
        with pytest.raises(EnvironmentProblem, match="no CUDA GPU"):
            OmniLabeller("captioner", CAPTIONER_REPO, device="cuda", checkpoints_dir=omni_root).load()
    for bad in ({"kind": "singer"}, {"dtype": "int4"}, {"attention": "xformers"}, {"max_seconds": 0},
                {"max_new_tokens": 0}, {"device": "cpu", "cpu_offload": True}):
        with pytest.raises(ValueError):
            OmniLabeller(**{"kind": "captioner", "model": CAPTIONER_REPO, **bad})


def test_batch_labelling_writes_sidecars_from_both_models(omni_root, real_loops, tmp_path, monkeypatch):
    """The two labellers in acestep.captioning.batch: loaded per pass, answers parsed into the
    sidecars the dataset builder reads, unloaded after; a second run is served from the cache."""
    from transformers import Qwen2TokenizerFast

    from acestep.captioning.batch import label_folder

    tokenizer = Qwen2TokenizerFast.from_pretrained(omni_root / "acestep-captioner")
    answers = {
        "acestep-captioner": "A dusty breakbeat loop with crisp snares, played at 136 BPM.",
        "acestep-transcriber": "# Languages\nen\n\n# Lyrics\n[Verse]\nDrums keep rolling on",
    }
    calls = []

    def generate(model, **inputs):
        folder = Path(model.config._name_or_path).name
        calls.append(folder)
        answer = tokenizer(answers[folder], add_special_tokens=False)["input_ids"]
        answer.append(tokenizer.convert_tokens_to_ids("<|im_end|>"))
        return torch.cat([inputs["input_ids"], torch.tensor([answer])], dim=1)

    monkeypatch.setattr(Qwen2_5OmniThinkerForConditionalGeneration, "generate", generate)
    songs = tmp_path / "songs"
    songs.mkdir()
    for name in ("loop_amen_full", "drum_roll"):
        shutil.copy(real_loops[name], songs / f"{name}.flac")
    labellers = [OmniLabeller("captioner", CAPTIONER_REPO, device="cpu", checkpoints_dir=omni_root),
                 OmniLabeller("transcriber", TRANSCRIBER_REPO, device="cpu", checkpoints_dir=omni_root)]
    summary = label_folder(songs, labellers, cache_dir=tmp_path / "cache")
    assert summary.labelled == 4 and not summary.failed
    assert calls == ["acestep-captioner"] * 2 + ["acestep-transcriber"] * 2
    assert all(labeller.model is None for labeller in labellers), "each model is unloaded after its pass"
    sidecar = json.loads((songs / "drum_roll.flac.json").read_text())
    assert sidecar["caption"] == answers["acestep-captioner"] and sidecar["bpm"] == 136.0
    assert sidecar["lyrics"] == "[Verse]\nDrums keep rolling on" and sidecar["language"] == "en"
    assert sidecar["is_instrumental"] is False
    assert sidecar["raw_outputs"] == {"captioner": answers["acestep-captioner"],
                                      "transcriber": answers["acestep-transcriber"]}
    assert sidecar["labelled_by"] == {labeller.name: labeller.fingerprint() for labeller in labellers}
    again = label_folder(songs, labellers, mode="overwrite", cache_dir=tmp_path / "cache")
    assert again.cached == 4 and again.labelled == 0 and len(calls) == 4
