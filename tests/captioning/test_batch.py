"""The batch labelling job: passes, fill-missing and overwrite, the cache, retries, failures, CSV."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from acestep.audio.io import load_audio
from acestep.captioning.batch import label_folder
from acestep.captioning.cross_check import keys_agree
from acestep.captioning.sidecar_json import sidecar_path
from acestep.captioning.labels import Labels
from acestep.dataset import build_dataset
from acestep.errors import AceStepError


class FakeLabeller:
    """Counts its inferences; gives a caption (or lyrics) derived from the file name."""

    def __init__(self, name="captioner", oom_times=0, bpm=None, key=""):
        self.name, self.calls, self.oom_times, self.reductions = name, 0, oom_times, 0
        self.bpm, self.key, self.unloaded = bpm, key, 0

    def fingerprint(self):
        return f"fake-{self.name}-v1"

    def label(self, path):
        if self.oom_times > 0:
            self.oom_times -= 1
            raise torch.OutOfMemoryError("CUDA out of memory")
        load_audio(path)  # like the real labellers: a file that does not decode raises AudioError
        self.calls += 1
        if self.name == "transcriber":
            return Labels(lyrics=f"[Verse]\nabout {path.stem}", source=self.name, raw="raw lyrics")
        return Labels(caption=f"a song called {path.stem}", genre="blues", bpm=self.bpm, keyscale=self.key,
                      source=self.name, raw=f"raw caption {path.stem}")

    def reduce_memory(self):
        self.reductions += 1
        return self.reductions <= 1

    def unload(self):
        self.unloaded += 1


def write_tone(path, seconds=1.0, rate=44100):
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, 0.3 * np.sin(2 * np.pi * 220 * t), rate)


@pytest.fixture
def library(tmp_path):
    folder = tmp_path / "songs"
    (folder / "album").mkdir(parents=True)
    write_tone(folder / "one.wav")
    write_tone(folder / "album" / "two.flac")
    return folder


def sidecar(path):
    return json.loads(sidecar_path(path).read_text())


def test_labels_go_to_sidecars_the_dataset_reads(library, tmp_path):
    captioner, transcriber = FakeLabeller(), FakeLabeller("transcriber")
    summary = label_folder(library, [captioner, transcriber], cache_dir=tmp_path / "cache")
    assert (summary.files, summary.labelled, summary.failed) == (2, 4, [])
    assert captioner.unloaded == transcriber.unloaded == 1  # each unloaded after its pass
    data = sidecar(library / "album" / "two.flac")
    assert data["caption"] == "a song called two" and data["lyrics"] == "[Verse]\nabout two"
    assert data["labelled_by"] == {"captioner": "fake-captioner-v1", "transcriber": "fake-transcriber-v1"}
    assert data["raw_outputs"]["captioner"] == "raw caption two"
    built = build_dataset(library).dataset
    assert sorted(s.caption for s in built.samples) == ["a song called one", "a song called two"]


def test_second_run_performs_zero_inferences(library, tmp_path):
    label_folder(library, [FakeLabeller()], cache_dir=tmp_path / "cache")
    again = FakeLabeller()
    summary = label_folder(library, [again], mode="overwrite", cache_dir=tmp_path / "cache")
    assert again.calls == 0 and summary.cached == 2 and summary.labelled == 0


def test_fill_missing_skips_inference_for_labelled_files(library, tmp_path):
    (library / "one.wav.json").write_text(json.dumps({"caption": "written by hand", "extra": 1}))
    labeller = FakeLabeller()
    summary = label_folder(library, [labeller], use_cache=False)
    assert labeller.calls == 1 and summary.skipped == 1
    assert sidecar(library / "one.wav") == {"caption": "written by hand", "extra": 1}


def test_overwrite_replaces_the_fields_and_keeps_other_keys(library):
    (library / "one.wav.json").write_text(json.dumps({"caption": "old", "extra": 1}))
    label_folder(library, [FakeLabeller()], mode="overwrite", use_cache=False)
    data = sidecar(library / "one.wav")
    assert data["caption"] == "a song called one" and data["extra"] == 1


def test_out_of_memory_retries_with_a_smaller_setting(library):
    labeller = FakeLabeller(oom_times=1)
    summary = label_folder(library, [labeller], use_cache=False)
    assert labeller.reductions == 1 and labeller.calls == 2 and not summary.failed
    assert any("out of memory" in note for note in summary.notes)
    stubborn = FakeLabeller(oom_times=10)
    summary = label_folder(library, [stubborn], mode="overwrite", use_cache=False)
    assert len(summary.failed) == 2 and "out of GPU memory" in summary.failed[0].reason


def test_bad_audio_and_malformed_sidecar_fail_per_file(library):
    (library / "junk.wav").write_text("not audio")
    (library / "album" / "two.flac.json").write_text("{broken")
    summary = label_folder(library, [FakeLabeller()], use_cache=False)
    reasons = {f.path.name: f.reason for f in summary.failed}
    assert "text file" in reasons["junk.wav"] and "not valid JSON" in reasons["two.flac"]
    assert sidecar(library / "one.wav")["caption"] == "a song called one"


def test_unwritable_sidecar_is_a_per_file_error(library, monkeypatch):
    """A read-only folder (simulated: CI runs as root, which folder permissions do not stop)."""
    from acestep.captioning import sidecar_json

    real = sidecar_json.write_sidecar_json

    def refuse_album(path, data):
        if path.parent.name == "album":
            raise PermissionError(13, "Permission denied")
        return real(path, data)

    monkeypatch.setattr(sidecar_json, "write_sidecar_json", refuse_album)
    summary = label_folder(library, [FakeLabeller()], use_cache=False)
    assert [f.path.name for f in summary.failed] == ["two.flac"]
    assert "cannot write the sidecar (Permission denied); is the folder read-only?" == summary.failed[0].reason


def test_folder_without_audio_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(AceStepError, match="holds no audio file"):
        label_folder(tmp_path, [FakeLabeller()])


def test_stop_between_files(library):
    summary = label_folder(library, [FakeLabeller()], use_cache=False, should_stop=lambda: True)
    assert summary.cancelled and summary.labelled == 0


def test_csv_holds_one_row_per_file(library, tmp_path):
    summary = label_folder(library, [FakeLabeller()], use_cache=False, csv_path=library / "labels.csv")
    rows = (library / "labels.csv").read_text().splitlines()
    assert rows[0].startswith("file,caption,genre") and len(rows) == 3
    assert summary.csv_path == library / "labels.csv"
    assert any(row.startswith("album/two.flac,a song called two,blues") for row in rows)


class FakeAnalysis(FakeLabeller):
    def __init__(self, bpm, key):
        super().__init__("analysis")
        self.result = Labels(bpm=bpm, keyscale=key, source="analysis")

    def label(self, path):
        self.calls += 1
        return self.result


def test_analysis_corrects_hallucinated_bpm_and_key(library):
    model = FakeLabeller(bpm=240.0, key="F# major")
    summary = label_folder(library, [model, FakeAnalysis(96.0, "A minor")], use_cache=False)
    data = sidecar(library / "one.wav")
    assert data["bpm"] == 96.0 and data["keyscale"] == "A minor"
    assert "corrected by signal analysis" in data["label_notes"][0]
    assert len(summary.notes) == 2


def test_analysis_accepts_double_time_and_the_relative_key(library):
    model = FakeLabeller(bpm=192.0, key="C major")
    label_folder(library, [model, FakeAnalysis(96.0, "A minor")], use_cache=False)
    data = sidecar(library / "one.wav")
    assert data["bpm"] == 192.0 and data["keyscale"] == "C major" and "label_notes" not in data


@pytest.mark.parametrize("a, b, same", [("Bb major", "A# major", True), ("C major", "A minor", True),
                                        ("Am", "C", True), ("C major", "C minor", False), ("E minor", "G", True),
                                        ("dorian", "C major", False)])
def test_keys_agree(a, b, same):
    assert keys_agree(a, b) is same


def test_mode_is_checked(library):
    with pytest.raises(AceStepError, match="mode must be one of"):
        label_folder(library, [FakeLabeller()], mode="sometimes")


def test_sidecar_path_prefers_an_existing_plain_sidecar(library):
    (library / "one.json").write_text("{}")
    assert sidecar_path(library / "one.wav") == library / "one.json"
    assert sidecar_path(library / "album" / "two.flac") == library / "album" / "two.flac.json"
    assert isinstance(sidecar_path(Path(library / "one.wav")), Path)


def test_a_model_that_cannot_load_stops_the_batch_once_and_keeps_what_was_written(library, tmp_path):
    from acestep.errors import CheckpointNotFoundError

    class MissingModel(FakeLabeller):
        def label(self, path):
            self.calls += 1
            raise CheckpointNotFoundError("transcriber model: not in checkpoints/; download it with ...")

    captioner, transcriber = FakeLabeller(), MissingModel("transcriber")
    with pytest.raises(CheckpointNotFoundError, match="transcriber model: not in checkpoints/"):
        label_folder(library, [captioner, transcriber], cache_dir=tmp_path / "cache")
    assert transcriber.calls == 1  # not once per file: the second file would fail the same way
    assert sidecar(library / "one.wav")["caption"] == "a song called one"  # the captioner's pass is kept


def build_failures(folder):
    return [f.reason for f in build_dataset(folder).failed]


def test_fill_missing_takes_an_alias_as_the_field_and_the_sidecar_still_builds(library):
    (library / "one.wav.json").write_text(json.dumps({"description": "amen break", "tempo": 138, "key": "A minor"}))
    summary = label_folder(library, [FakeAnalysis(140.0, "C major")], use_cache=False)
    data = sidecar(library / "one.wav")
    assert (data["tempo"], data["key"]) == (138, "A minor")
    assert "bpm" not in data and "keyscale" not in data and summary.notes == []  # 138 ~ 140; A minor ~ C major
    assert build_failures(library) == []
    one = next(s for s in build_dataset(library).dataset.samples if s.caption == "amen break")
    assert (one.bpm, one.keyscale) == (138, "A minor")


def test_overwrite_and_corrections_update_the_key_already_there(library):
    (library / "one.wav.json").write_text(json.dumps({"caption": "by hand", "Tempo": 100, "key": "C major"}))
    label_folder(library, [FakeAnalysis(140.0, "F# minor")], mode="overwrite", use_cache=False)
    data = sidecar(library / "one.wav")
    assert (data["Tempo"], data["key"]) == (140.0, "F# minor") and "bpm" not in data and "keyscale" not in data
    # A model fills the blank "tempo" and "key"; the analysis corrects them under those keys.
    (library / "album" / "two.flac.json").write_text(json.dumps({"tempo": "", "key": ""}))
    label_folder(library, [FakeLabeller(bpm=240.0, key="F# major"), FakeAnalysis(96.0, "A minor")], use_cache=False)
    data = sidecar(library / "album" / "two.flac")
    assert (data["tempo"], data["key"]) == (96.0, "A minor") and "bpm" not in data and "keyscale" not in data
    assert data["label_notes"] == ["corrected by signal analysis: bpm 240 -> 96, key F# major -> A minor"]
    assert build_failures(library) == []


def test_a_persons_bpm_and_key_are_kept_and_the_disagreement_noted(library):
    (library / "one.wav.json").write_text(json.dumps({"caption": "my labels", "bpm": 100, "keyscale": "C major"}))
    summary = label_folder(library, [FakeAnalysis(140.0, "F# minor")], use_cache=False)
    data = sidecar(library / "one.wav")
    assert (data["bpm"], data["keyscale"]) == (100, "C major") and "label_notes" not in data
    assert summary.notes == [
        'one.wav: the sidecar\'s bpm 100 is kept, though signal analysis finds 140 (to take it, delete "bpm" from '
        "one.wav.json and run again, or run again with --labeller analysis --mode overwrite)",
        'one.wav: the sidecar\'s key C major is kept, though signal analysis finds F# minor (to take it, delete '
        '"keyscale" from one.wav.json and run again, or run again with --labeller analysis --mode overwrite)',
    ]


def test_only_what_a_model_wrote_in_this_run_is_corrected(library):
    (library / "one.wav.json").write_text(json.dumps({"bpm": 120}))  # the person's bpm; the model adds the key
    summary = label_folder(library, [FakeLabeller(bpm=240.0, key="F# major"), FakeAnalysis(96.0, "A minor")],
                           use_cache=False)
    data = sidecar(library / "one.wav")
    assert (data["bpm"], data["keyscale"]) == (120, "A minor")
    assert data["label_notes"] == ["corrected by signal analysis: key F# major -> A minor"]
    assert "one.wav: key F# major -> A minor (signal analysis contradicted the model)" in summary.notes
    assert any(note.startswith("one.wav: the sidecar's bpm 120 is kept") for note in summary.notes)


def refuse_writes(monkeypatch, refuse):
    """Simulated read-only sidecars (CI runs as root, which folder permissions do not stop)."""
    from acestep.captioning import sidecar_json

    real = sidecar_json.write_sidecar_json

    def write(path, data):
        if refuse(path, data):
            raise PermissionError(13, "Permission denied")
        return real(path, data)

    monkeypatch.setattr(sidecar_json, "write_sidecar_json", write)


READ_ONLY = "cannot write the sidecar (Permission denied); is the folder read-only?"


def test_a_read_only_sidecar_is_listed_and_the_batch_finishes(library, monkeypatch, capsys):
    from acestep.cli import main
    from acestep.commands import data as commands

    (library / "album" / "two.flac.json").write_text(json.dumps({"bpm": 100}))
    refuse_writes(monkeypatch, lambda path, data: path.parent.name == "album")
    monkeypatch.setattr(commands, "build_labellers", lambda args: [FakeAnalysis(140.0, "A minor")])
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(library.parent / "inductor"))  # main() sets it if unset
    assert main(["caption", str(library), "--labeller", "analysis", "--no-cache"]) == 2  # EXIT_PARTIAL
    out = capsys.readouterr().out
    assert "2 file(s): 1 labelled, 0 from the cache, 0 already labelled (skipped), 1 failed" in out
    assert f"failed: {library / 'album' / 'two.flac'}: {READ_ONLY}" in out
    assert sidecar(library / "album" / "two.flac") == {"bpm": 100}


def test_a_correction_that_cannot_be_written_fails_that_file(library, monkeypatch):
    refuse_writes(monkeypatch, lambda path, data: "label_notes" in data)
    summary = label_folder(library, [FakeLabeller(bpm=240.0), FakeAnalysis(96.0, "A minor")], use_cache=False)
    assert sorted((f.path.name, f.reason) for f in summary.failed) == [("one.wav", READ_ONLY), ("two.flac", READ_ONLY)]
    assert sidecar(library / "one.wav")["bpm"] == 240.0  # left as the model wrote it, and listed


def test_a_file_whose_sidecar_cannot_be_written_is_failed_not_labelled(library, tmp_path, monkeypatch):
    label_folder(library, [FakeLabeller()], cache_dir=tmp_path / "cache")  # fills the cache
    refuse_writes(monkeypatch, lambda path, data: True)
    for use_cache in (False, True):
        summary = label_folder(library, [FakeLabeller()], mode="overwrite", cache_dir=tmp_path / "cache",
                               use_cache=use_cache)
        assert (summary.labelled, summary.cached, len(summary.failed)) == (0, 0, 2)
        assert summary.describe().startswith("2 file(s): 0 labelled, 0 from the cache, 0 already labelled "
                                             "(skipped), 2 failed")


def test_a_csv_path_that_cannot_be_written_stops_before_any_labelling(library, tmp_path, monkeypatch):
    from acestep.captioning import batch

    (tmp_path / "notadir").write_text("")
    labeller = FakeLabeller()
    with pytest.raises(AceStepError, match=r"^cannot write the labels CSV .*notadir/labels\.csv: .*notadir is a "
                                           r"file, not a folder; choose another --csv path$"):
        label_folder(library, [labeller], use_cache=False, csv_path=tmp_path / "notadir" / "labels.csv")
    with pytest.raises(AceStepError, match=r"labels CSV .*songs: it is a folder; choose another --csv path$"):
        label_folder(library, [labeller], use_cache=False, csv_path=library)
    locked = tmp_path / "locked"
    locked.mkdir()
    real = batch.tempfile.TemporaryFile

    def temporary_file(*args, dir=None, **kwargs):
        if Path(dir) == locked:
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(batch.tempfile, "TemporaryFile", temporary_file)
    with pytest.raises(AceStepError, match=r"labels CSV .*locked/new/labels\.csv: .*locked cannot be written "
                                           r"\(Permission denied\); choose another --csv path$"):
        label_folder(library, [labeller], use_cache=False, csv_path=locked / "new" / "labels.csv")
    assert labeller.calls == 0 and not (library / "one.wav.json").exists()


def test_writing_the_csv_into_a_file_path_is_a_clear_error(library, tmp_path):
    from acestep.captioning.batch import write_labels_csv

    (tmp_path / "notadir").write_text("")
    with pytest.raises(AceStepError, match=r"labels CSV .*notadir/labels\.csv: .*notadir is a file, not a folder"):
        write_labels_csv(tmp_path / "notadir" / "labels.csv", [library / "one.wav"])


def test_a_cache_folder_that_cannot_be_used_stops_before_any_labelling(library, tmp_path):
    (tmp_path / "notadir").write_text("")
    labeller = FakeLabeller()
    for cache_dir in (tmp_path / "notadir" / "cache", tmp_path / "notadir"):
        with pytest.raises(AceStepError, match=r"^cannot use .*notadir.* as the labels cache: .*notadir is a file, "
                                               r"not a folder; choose another folder with --cache-dir, or run with "
                                               r"--no-cache$"):
            label_folder(library, [labeller], cache_dir=cache_dir)
    assert labeller.calls == 0 and not (library / "one.wav.json").exists()
