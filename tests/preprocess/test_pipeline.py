"""Scan -> build -> preprocess on real music with the tiny model, end to end."""

import shutil
from pathlib import Path

import pytest
import soundfile as sf
import torch

from acestep.cli import main
from acestep.dataset import Sample, build_dataset, load_dataset, save_dataset
from acestep.errors import CheckpointNotFoundError, PreprocessError
from acestep.models.encoders import load_text_encoder
from acestep.models.tiny import write_tiny_checkpoints
from acestep.preprocess.manifest import read_manifest
from acestep.preprocess.pipeline import PreprocessSettings, preprocess_dataset
from acestep.preprocess.tensors import PreprocessedDataset
from acestep.preprocess.prompts import caption_prompt, lyric_prompt
from acestep.preprocess.tensors import read_sample

MAX_SECONDS = 4.0  # keeps the tiny VAE (about 1 s per second of audio on CPU) quick
SETTINGS = PreprocessSettings(max_duration=MAX_SECONDS)


@pytest.fixture(scope="module")
def song_folder(real_songs, real_loops, tmp_path_factory) -> Path:
    """Two rendered MIDI clips with lyrics sidecars, two recorded loops, one broken file."""
    folder = tmp_path_factory.mktemp("library")
    (folder / "songs").mkdir()
    (folder / "loops").mkdir()
    for clip in real_songs:
        shutil.copy(clip, folder / "songs" / clip.name)
        (folder / "songs" / f"{clip.name}.txt").write_text("[Verse]\nride the train\n[Chorus]\nla la la\n")
    for name in ("drum_roll", "guit_e_slide"):  # mono 44.1 kHz recordings
        shutil.copy(real_loops[name], folder / "loops" / f"{name}.flac")
    (folder / "loops" / "notes.wav").write_text("this is not audio")
    return folder


@pytest.fixture(scope="module")
def dataset_json(song_folder) -> Path:
    result = build_dataset(song_folder, trigger_tag="mystyle", language="en")
    assert [f.path.name for f in result.failed] == ["notes.wav"]  # the build already flags it...
    for sample in result.dataset.samples:
        sample.caption = f"recording of {Path(sample.audio).stem}"
        sample.bpm = 120.0
    # ...and a hand-edited dataset that still lists it must not stop preprocessing.
    result.dataset.samples.append(Sample(audio="loops/notes.wav", caption="oops"))
    path = song_folder / "dataset.json"
    save_dataset(result.dataset, path)
    return path


@pytest.fixture(scope="module")
def tensors_dir(dataset_json, song_folder, tiny_checkpoints, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tensors")
    summary = preprocess_dataset(dataset_json, out, tiny_checkpoints / "acestep-v15-turbo", settings=SETTINGS)
    assert (len(summary.done), len(summary.skipped), summary.cancelled) == (4, 0, False)
    # the songs longer than max_duration are named: training never sees their end
    longer = sorted(source for source in summary.done if sf.info(song_folder / source).duration > MAX_SECONDS)
    assert sorted(summary.cut) == longer and "songs/coconut_run2_12s.wav" in longer
    assert (f"  {len(longer)} longer than --max-duration: only their first 4 s were encoded, and training never sees "
            "the rest") in summary.describe()
    assert all(f"  cut: {source}" in summary.describe().splitlines() for source in longer)
    return out


def expected_frames(path: Path) -> int:
    info = sf.info(path)
    resampled = round(info.frames * 48000 / info.samplerate)
    return min(resampled, int(MAX_SECONDS * 48000)) // 1920


def test_manifest_lists_samples_failures_and_the_model(tensors_dir, song_folder, tiny_checkpoints):
    manifest = read_manifest(tensors_dir)
    assert sorted(s.source for s in manifest.samples) == [
        "loops/drum_roll.flac", "loops/guit_e_slide.flac",
        "songs/coconut_run2_12s.wav", "songs/train_filled_with_cash_6s.wav"]
    assert [(f.source, "not audio" in f.reason) for f in manifest.failed] == [("loops/notes.wav", True)]
    assert manifest.model["variant"] == "turbo"
    from acestep.models import read_dit_config
    assert manifest.model["fingerprint"] == read_dit_config(tiny_checkpoints / "acestep-v15-turbo").fingerprint
    assert manifest.trigger_tag == "mystyle" and manifest.tag_position == "prepend"
    assert all(s.caption.startswith("mystyle, recording of ") for s in manifest.samples)


def test_latents_have_exactly_25_frames_per_second(tensors_dir, song_folder):
    for entry in read_manifest(tensors_dir).samples:
        tensors = read_sample(tensors_dir / entry.tensors)
        frames = expected_frames(song_folder / entry.source)
        assert entry.frames == frames and entry.duration == frames / 25
        assert tensors["target_latents"].shape == (frames, 64)
        assert tensors["target_latents"].dtype == torch.float32
        assert torch.isfinite(tensors["target_latents"]).all()


def test_condition_packs_lyrics_timbre_and_caption_unpadded(tensors_dir, tiny_checkpoints, dataset_json):
    _, tokenizer = load_text_encoder(tiny_checkpoints / "Qwen3-Embedding-0.6B")
    samples = {s.audio: s for s in load_dataset(dataset_json).samples}
    for entry in read_manifest(tensors_dir).samples:
        sample = samples[entry.source]
        caption_tokens = len(tokenizer(caption_prompt(entry.caption, sample.bpm, sample.timesignature,
                                                      sample.keyscale, entry.duration)).input_ids)
        lyric_tokens = len(tokenizer(lyric_prompt(sample.lyrics, sample.language, sample.instrumental)).input_ids)
        tensors = read_sample(tensors_dir / entry.tensors)
        assert tensors["encoder_hidden_states"].shape == (lyric_tokens + 1 + caption_tokens, 64)
        assert tensors["encoder_attention_mask"].dtype == torch.bool
        assert tensors["encoder_attention_mask"].all()


def test_rerun_skips_every_unchanged_sample(tensors_dir, dataset_json, tiny_checkpoints):
    before = {p.name: p.read_bytes() for p in tensors_dir.glob("*.safetensors")}
    summary = preprocess_dataset(dataset_json, tensors_dir, tiny_checkpoints / "acestep-v15-turbo", settings=SETTINGS)
    assert (len(summary.done), len(summary.skipped)) == (0, 4)
    assert [f.source for f in summary.failed] == ["loops/notes.wav"]  # retried, still broken
    assert {p.name: p.read_bytes() for p in tensors_dir.glob("*.safetensors")} == before


def test_two_pass_low_vram_mode_gives_bit_identical_tensors(tensors_dir, dataset_json, tiny_checkpoints, tmp_path):
    settings = PreprocessSettings(max_duration=MAX_SECONDS, low_vram=True)
    summary = preprocess_dataset(dataset_json, tmp_path, tiny_checkpoints / "acestep-v15-turbo", settings=settings)
    assert len(summary.done) == 4
    assert not (tmp_path / ".pass1").exists()
    for entry in read_manifest(tensors_dir).samples:
        one, two = read_sample(tensors_dir / entry.tensors), read_sample(tmp_path / entry.tensors)
        for key in one:
            assert torch.equal(one[key], two[key]), (entry.source, key)


def test_changed_caption_reencodes_only_that_sample(tensors_dir, dataset_json, tiny_checkpoints, tmp_path):
    out = tmp_path / "tensors"
    shutil.copytree(tensors_dir, out)
    dataset = load_dataset(dataset_json)
    dataset.samples[0].caption = "a completely new caption"
    edited = dataset_json.parent / "edited.json"
    save_dataset(dataset, edited)
    events = []
    summary = preprocess_dataset(edited, out, tiny_checkpoints / "acestep-v15-turbo", settings=SETTINGS,
                                 progress=events.append)
    assert summary.done == [dataset.samples[0].audio]
    assert len(summary.skipped) == 3
    assert [f.source for f in summary.failed] == ["loops/notes.wav"]
    # Each sample to encode is announced when it starts. The ETA is paced by encoded samples only:
    # none until one is done (the skipped ones took no time), then the time per encoded sample.
    assert [(e.index, e.status) for e in events] == [
        (2, "skipped"), (3, "skipped"), (4, "skipped"), (1, "encoding"), (1, "done"), (5, "encoding"), (5, "failed")]
    assert [e.eta for e in events[:4]] == [None] * 4
    done = events[4]
    assert 0 < done.eta <= done.elapsed and events[-1].eta == 0


def test_cancel_leaves_a_consistent_folder_and_a_rerun_finishes(dataset_json, tiny_checkpoints, tmp_path):
    polls = []

    def stop_after_first_sample() -> bool:
        polls.append(1)
        return len(polls) > 1

    checkpoint = tiny_checkpoints / "acestep-v15-turbo"
    summary = preprocess_dataset(dataset_json, tmp_path, checkpoint, settings=SETTINGS,
                                 should_stop=stop_after_first_sample)
    assert summary.cancelled and len(summary.done) == 1
    assert len(PreprocessedDataset(tmp_path)) == 1  # the manifest matches the files on disk
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    summary = preprocess_dataset(dataset_json, tmp_path, checkpoint, settings=SETTINGS)
    assert (len(summary.done), len(summary.skipped)) == (3, 1)
    assert len(PreprocessedDataset(tmp_path)) == 4


def test_a_stopped_rerun_under_new_settings_lists_only_tensors_made_under_them(
        tensors_dir, dataset_json, tiny_checkpoints, tmp_path):
    out = tmp_path / "tensors"
    shutil.copytree(tensors_dir, out)
    dataset = load_dataset(dataset_json)
    dataset.trigger_tag = "newtag"  # every sample's caption changes
    edited = dataset_json.parent / "retagged.json"
    save_dataset(dataset, edited)
    polls = []
    summary = preprocess_dataset(edited, out, tiny_checkpoints / "acestep-v15-turbo", settings=SETTINGS,
                                 should_stop=lambda: polls.append(1) or len(polls) > 1)
    assert summary.cancelled and len(summary.done) == 1
    manifest = read_manifest(out)
    assert manifest.trigger_tag == "newtag"
    assert [s.source for s in manifest.samples] == summary.done  # not the three made with the old tag
    assert "newtag" in manifest.samples[0].caption
    summary = preprocess_dataset(edited, out, tiny_checkpoints / "acestep-v15-turbo", settings=SETTINGS)
    assert (len(summary.done), len(summary.skipped)) == (3, 1)
    # the dataset's order, as a run through in one go writes it, whatever order they were encoded in
    assert [s.source for s in read_manifest(out).samples] == [s.source for s in read_manifest(tensors_dir).samples]


def test_a_resumed_manifest_keeps_the_dataset_s_order(tensors_dir, dataset_json, tiny_checkpoints, tmp_path):
    out = tmp_path / "tensors"
    shutil.copytree(tensors_dir, out)
    dataset = load_dataset(dataset_json)
    dataset.samples[0].caption = "a completely new caption"  # encoded again, after the three skipped
    edited = dataset_json.parent / "recaptioned.json"
    save_dataset(dataset, edited)
    preprocess_dataset(edited, out, tiny_checkpoints / "acestep-v15-turbo", settings=SETTINGS)
    assert [s.source for s in read_manifest(out).samples] == [s.source for s in read_manifest(tensors_dir).samples]


def test_a_full_disk_stops_preprocessing_with_what_to_do_and_keeps_the_samples_written(
        dataset_json, tiny_checkpoints, tmp_path, monkeypatch):
    import errno
    import os

    real_replace, written = os.replace, []

    def fills_the_disk_after_one(source, target):  # the rename that puts a written tensors file in place
        if str(target).endswith(".safetensors"):
            if written:
                raise OSError(errno.ENOSPC, "No space left on device")
            written.append(target)
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", fills_the_disk_after_one)
    checkpoint = tiny_checkpoints / "acestep-v15-turbo"
    with pytest.raises(PreprocessError, match=r"Could not write .*\.safetensors: the disk is full\. The samples "
                                              r"written before are kept; .*run preprocess again: it skips them"):
        preprocess_dataset(dataset_json, tmp_path, checkpoint, settings=SETTINGS)
    assert len(PreprocessedDataset(tmp_path)) == 1  # the manifest lists the one sample on disk
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in tmp_path.glob("*.safetensors"))  # not mkstemp's 0600
    monkeypatch.setattr(os, "replace", real_replace)  # space freed
    summary = preprocess_dataset(dataset_json, tmp_path, checkpoint, settings=SETTINGS)
    assert (len(summary.done), len(summary.skipped)) == (3, 1)


def test_tensors_folder_of_another_checkpoint_is_refused(tensors_dir, dataset_json, tmp_path):
    other = write_tiny_checkpoints(tmp_path / "other", seed=1)
    with pytest.raises(PreprocessError, match="holds tensors made with .*Choose another output folder"):
        preprocess_dataset(dataset_json, tensors_dir, other / "acestep-v15-turbo", settings=SETTINGS)


def test_missing_vae_beside_the_checkpoint_is_named(dataset_json, tiny_checkpoints, tmp_path):
    lonely = tmp_path / "acestep-v15-turbo"
    shutil.copytree(tiny_checkpoints / "acestep-v15-turbo", lonely)
    with pytest.raises(CheckpointNotFoundError, match=r"vae.* not found"):
        preprocess_dataset(dataset_json, tmp_path / "out", lonely, settings=SETTINGS)


def test_cli_preprocess_reports_failed_files_with_exit_2(dataset_json, tiny_checkpoints, tensors_dir, tmp_path,
                                                        capsys):
    out = tmp_path / "tensors"
    shutil.copytree(tensors_dir, out)  # everything already encoded: the CLI run only checks and reports
    status = main(["preprocess", "--dataset", str(dataset_json), "--checkpoint", "acestep-v15-turbo",
                   "--checkpoints-dir", str(tiny_checkpoints), "--out", str(out), "--max-duration", str(MAX_SECONDS)])
    captured = capsys.readouterr()
    assert status == 2
    assert "0 encoded, 4 unchanged (skipped), 1 failed" in captured.out
    assert "failed: loops/notes.wav" in captured.out


def test_preprocessed_real_music_trains(tensors_dir, tiny_checkpoints, tmp_path):
    from acestep.training.config import TrainingConfig, apply_overrides
    from acestep.training.loop import train

    config = apply_overrides(TrainingConfig(), [
        f"data.tensors_dir={tensors_dir}", f"model.checkpoint={tiny_checkpoints / 'acestep-v15-turbo'}",
        f"run.output_dir={tmp_path}", "run.name=real", "run.epochs=1", "adapter.rank=4", "adapter.alpha=4",
        "optimizer.warmup_steps=0"])
    result = train(config)
    assert result.status == "completed" and result.step == 4
    assert (result.run_dir / "final" / "adapter_model.safetensors").is_file()
