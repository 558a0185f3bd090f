"""The 5Hz-LM labeller end to end on tiny random models (tiny DiT + VAE from
`write_tiny_checkpoints`, tiny LM from `write_tiny_lm`) and real audio: codes, prompt,
generation, Labels; model resolution, offline messages, fingerprint, memory reduction."""

import math
import shutil
from pathlib import Path

import pytest
import soundfile as sf
import torch

from acestep.captioning import lm_labeller
from acestep.captioning.lm_labeller import LmLabeller, sample_tokens
from acestep.models.checkpoints import download_size
from acestep.captioning.lm_prompt import CODEBOOK_SIZE, build_understanding_prompt, codes_in, parse_lm_output
from acestep.captioning.tiny_lm import write_tiny_lm
from acestep.errors import AudioError, CheckpointError, CheckpointNotFoundError

MAX_SECONDS = 1.3  # keeps the tiny VAE fast on a CPU; 32 latent frames -> 7 codes (last window padded)
CORPUS = Path(__file__).parent / "data" / "lm_outputs"


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory) -> Path:
    """A checkpoints folder holding only the tiny LM, as acestep-5Hz-lm-1.7B (read-only)."""
    root = tmp_path_factory.mktemp("lm_checkpoints")
    write_tiny_lm(root)
    return root


@pytest.fixture(scope="module")
def models(tiny_checkpoints, lm_dir) -> dict:
    return {"dit": tiny_checkpoints / "acestep-v15-turbo", "vae": tiny_checkpoints / "vae", "checkpoints_dir": lm_dir}


@pytest.fixture(scope="module")
def labeller(models) -> LmLabeller:
    labeller = LmLabeller(device="cpu", max_seconds=MAX_SECONDS, max_new_tokens=12, **models)
    labeller.load()
    return labeller


@pytest.fixture(scope="module")
def song(real_songs) -> Path:
    return real_songs[0]  # 6 s of a rendered openmsx song, 48 kHz stereo


@pytest.fixture(scope="module")
def song_codes(labeller, song) -> list[int]:
    return labeller.audio_codes(song)


def test_codes_of_a_real_song_are_the_posterior_mean_tokenized_at_5_hz(labeller, song, song_codes):
    from acestep.audio.io import load_audio
    from acestep.preprocess.encode import trim_to_whole_frames

    frames = int(MAX_SECONDS * 48_000) // 1920
    assert len(song_codes) == math.ceil(frames / 5) == 7
    assert all(0 <= code < CODEBOOK_SIZE for code in song_codes)
    assert labeller.audio_codes(song) == song_codes  # deterministic: no posterior sample
    # The same codes straight from the VAE's posterior mean and the DiT's tokenizer.
    models = labeller._models
    audio = torch.from_numpy(trim_to_whole_frames(load_audio(song, max_seconds=MAX_SECONDS)))
    with torch.inference_mode():
        mean = models.vae.encode(audio[None]).latent_dist.mean[0].T
        _, indices, _ = models.bundle.tokenize(mean[None])
    assert indices.reshape(-1).tolist() == song_codes


def test_codes_of_a_mono_44k_loop_and_of_a_file_shorter_than_max_seconds(labeller, real_loops, song, tmp_path):
    loop_codes = labeller.audio_codes(real_loops["drum_roll"])  # mono, 44.1 kHz, 6.2 s
    assert len(loop_codes) == 7 and all(0 <= code < CODEBOOK_SIZE for code in loop_codes)
    samples, rate = sf.read(song, frames=int(0.9 * 48_000), dtype="int16")
    short = tmp_path / "short.wav"
    sf.write(short, samples, rate, subtype="PCM_16")
    assert len(labeller.audio_codes(short)) == math.ceil((int(0.9 * 48_000) // 1920) / 5) == 5


def test_prompt_holds_exactly_the_codes_in_order_in_the_official_chat(labeller, song, song_codes):
    prompt = labeller.understanding_prompt(song)
    assert codes_in(prompt) == song_codes
    codes = "".join(f"<|audio_code_{code}|>" for code in song_codes)
    assert prompt == (
        "<|im_start|>system\n# Instruction\nUnderstand the given musical conditions and describe the audio "
        f"semantics accordingly:\n\n<|im_end|>\n<|im_start|>user\n{codes}<|im_end|>\n<|im_start|>assistant\n"
    )
    tokens = labeller.tokenizer.convert_ids_to_tokens(labeller.tokenizer(prompt).input_ids)
    assert [token for token in tokens if token.startswith("<|audio_code_")] == [
        f"<|audio_code_{code}|>" for code in song_codes]  # one token per code


def test_label_end_to_end_keeps_the_raw_answer(labeller, song):
    labels = labeller.label(song)
    assert labels.source == "lm" and labels.raw
    again = parse_lm_output(labels.raw)
    assert (labels.caption, labels.bpm, labels.lyrics, labels.parsed) == (again.caption, again.bpm, again.lyrics,
                                                                          again.parsed)
    assert "the LM was cut off at max_new_tokens=12; raise it if lyrics are missing" in labels.notes
    assert "described the first 1.3 s of 6 s" in labels.notes


def test_label_reads_what_the_lm_generates(labeller, song, song_codes, monkeypatch):
    answer = (CORPUS / "01_official_full.txt").read_text(encoding="utf-8")
    tokenizer = labeller.tokenizer
    seen = {}

    def fake_sample_tokens(model, input_ids, max_new_tokens, temperature, stop_ids, generator, vocab_limit):
        seen.update(prompt=tokenizer.decode(input_ids[0]), temperature=temperature, limit=vocab_limit)
        return tokenizer(answer, add_special_tokens=False).input_ids, True

    monkeypatch.setattr(lm_labeller, "sample_tokens", fake_sample_tokens)
    labels = labeller.label(song)
    assert codes_in(seen["prompt"]) == song_codes and seen["prompt"].endswith("<|im_start|>assistant\n")
    assert seen["temperature"] == 0.7 and seen["limit"] == len(tokenizer)
    assert (labels.bpm, labels.keyscale, labels.language, labels.instrumental) == (124.0, "F# minor", "en", False)
    assert labels.lyrics.startswith("[Verse 1]\nCity lights") and labels.raw == answer
    assert labels.notes == ["described the first 1.3 s of 6 s"]


def test_greedy_decoding_matches_transformers_generate_and_sampling_is_seeded(lm_dir, song_codes):
    from transformers import AutoTokenizer, Qwen3ForCausalLM

    folder = lm_dir / "acestep-5Hz-lm-1.7B"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = Qwen3ForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = tokenizer(build_understanding_prompt(song_codes, tokenizer), return_tensors="pt").input_ids
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ours, stopped = sample_tokens(model, ids, 16, 0.0, {stop})
    reference = model.generate(ids, do_sample=False, max_new_tokens=16, eos_token_id=stop, pad_token_id=stop)
    assert ours == reference[0, ids.shape[1]:].tolist() and not stopped and len(set(ours)) > 1

    def sampled(seed, limit=None):
        return sample_tokens(model, ids, 16, 0.7, {stop}, torch.Generator().manual_seed(seed), limit)[0]

    assert sampled(0) == sampled(0) != sampled(1)
    assert max(sampled(0, limit=100)) < 100
    stop_at = next(index for index, token in enumerate(ours) if index and token not in ours[:index])
    forced, stopped = sample_tokens(model, ids, 16, 0.0, {ours[stop_at]})
    assert forced == ours[: stop_at + 1] and stopped  # a stop token ends generation and is kept


def test_missing_models_offline_name_the_model_its_size_and_the_command(models, tmp_path):
    empty = tmp_path / "checkpoints"
    empty.mkdir()
    with pytest.raises(CheckpointNotFoundError) as error:
        LmLabeller(lm="acestep-5Hz-lm-4B", checkpoints_dir=empty).fingerprint()
    message = str(error.value)
    assert "acestep-5Hz-lm-4B" in message and "about 8.4 GB" in message
    assert f"acestep-trainer download acestep-5Hz-lm-4B --checkpoints-dir {empty}" in message
    with pytest.raises(CheckpointNotFoundError, match="audio tokenizer.*4.8 GB"):
        LmLabeller(lm=models["checkpoints_dir"] / "acestep-5Hz-lm-1.7B", checkpoints_dir=empty).label(Path("x.wav"))
    with pytest.raises(CheckpointNotFoundError, match="acestep-trainer download vae.*VAE.*337 MB"):
        LmLabeller(checkpoints_dir=models["checkpoints_dir"], dit=models["dit"], vae="vae").fingerprint()
    assert download_size("ACE-Step/acestep-5Hz-lm-0.6B") == "about 1.3 GB"
    assert download_size("acestep-5Hz-lm-1.7B") == "3.7 GB"


def test_hugging_face_ids_are_names_not_paths(models, tmp_path):
    lm = models["checkpoints_dir"] / "acestep-5Hz-lm-1.7B"
    for name in ("acestep-5Hz-lm-0.6B", "acestep-5Hz-lm-1.7B", "my-5hz-lm"):
        (tmp_path / name).symlink_to(lm, target_is_directory=True)
    settings = {"dit": models["dit"], "vae": models["vae"], "checkpoints_dir": tmp_path}
    assert LmLabeller(lm="ACE-Step/acestep-5Hz-lm-0.6B", **settings).folders().lm == tmp_path / "acestep-5Hz-lm-0.6B"
    main_repo = LmLabeller(lm="ACE-Step/Ace-Step1.5/acestep-5Hz-lm-1.7B", **settings)
    assert main_repo.folders().lm == tmp_path / "acestep-5Hz-lm-1.7B"
    assert LmLabeller(lm="someone/my-5hz-lm", **settings).fingerprint().startswith("lm=my-5hz-lm:")
    with pytest.raises(CheckpointNotFoundError, match="acestep-trainer download someone/other-lm"):
        LmLabeller(lm="someone/other-lm", **settings).fingerprint()


def test_fingerprint_follows_models_and_settings(models, tmp_path):
    base = LmLabeller(**models).fingerprint()
    assert base == LmLabeller(**models).fingerprint()
    assert "lm=acestep-5Hz-lm-1.7B:" in base and ",dit=acestep-v15-turbo:" in base and ",vae=vae:" in base
    changed = [LmLabeller(max_seconds=120, **models), LmLabeller(seed=1, **models),
               LmLabeller(temperature=0.0, **models), LmLabeller(max_new_tokens=512, **models)]
    assert len({base, *(labeller.fingerprint() for labeller in changed)}) == 5
    copy = tmp_path / "acestep-5Hz-lm-1.7B"
    shutil.copytree(models["checkpoints_dir"] / "acestep-5Hz-lm-1.7B", copy)
    with (copy / "model.safetensors").open("r+b") as weights:  # one byte of the last tensor
        weights.seek(-1, 2)
        last = weights.read(1)
        weights.seek(-1, 2)
        weights.write(bytes([last[0] ^ 1]))
    other = LmLabeller(lm=copy, dit=models["dit"], vae=models["vae"]).fingerprint()
    assert other != base and other.split(",")[1:] == base.split(",")[1:]


def test_reduce_memory_halves_max_seconds_down_to_30(models):
    labeller = LmLabeller(**models)
    before = labeller.fingerprint()
    steps = []
    while labeller.reduce_memory():
        steps.append(labeller.max_seconds)
    assert steps == [120.0, 60.0, 30.0] and labeller.fingerprint() != before
    odd = LmLabeller(max_seconds=45, **models)
    assert odd.reduce_memory() and odd.max_seconds == 30.0 and not odd.reduce_memory()


def test_a_folder_that_is_not_the_5hz_lm_is_refused(models, tiny_checkpoints):
    labeller = LmLabeller(lm=tiny_checkpoints / "Qwen3-Embedding-0.6B", dit=models["dit"], vae=models["vae"])
    with pytest.raises(CheckpointError, match=r"Qwen3-Embedding-0.6B/config.json describes .*not the ACE-Step 5Hz LM"):
        labeller.load()


def test_bad_settings_and_bad_audio(labeller, tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        LmLabeller(dtype="int8")
    with pytest.raises(ValueError, match="max_seconds"):
        LmLabeller(max_seconds=0)
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    with pytest.raises(AudioError):
        labeller.label(text)


def test_no_remote_code_flag_in_the_labeller_source():
    package = Path(lm_labeller.__file__).parent
    for name in ("lm_labeller.py", "lm_prompt.py", "tiny_lm.py"):
        assert "trust_remote" not in (package / name).read_text(encoding="utf-8")
