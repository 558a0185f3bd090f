"""Scanning a folder into an existing dataset: hand edits kept, new songs added from their sidecars,
samples whose audio is gone listed (and dropped only when asked), the dataset's settings kept; and
`acestep-trainer build --update`, which runs it on a dataset file."""

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from acestep.cli import main
from acestep.dataset import (
    Dataset,
    Sample,
    UpdateResult,
    build_dataset,
    load_dataset,
    load_dataset_revision,
    save_dataset,
    update_dataset,
)
from acestep.errors import DatasetError


@pytest.fixture
def songs(tmp_path, make_audio) -> Path:
    """A folder of two songs: one with a captioner sidecar, one plain."""
    root = tmp_path / "songs"
    make_audio(root / "one.wav", seconds=1.0)
    (root / "one.json").write_text(json.dumps({"caption": "sidecar caption", "genres": ["pop"], "bpm": 100}),
                                   encoding="utf-8")
    make_audio(root / "sub" / "two.flac", seconds=0.5, rate=44_100, channels=1)
    return root


def hand_edited(songs: Path, path: Path) -> Dataset:
    """The songs built with settings, hand-edited (every kind of field), saved to `path` and loaded."""
    dataset = build_dataset(songs, name="my set", trigger_tag="zx", tag_position="append", genre_ratio=0.5,
                            seed=7).dataset
    one, two = dataset.samples
    edited = [replace(one, caption="reviewed by hand", lyrics="[Verse]\nmy words", bpm=101.5, keyscale="A minor",
                      language="en", prompt_source="caption"),
              replace(two, caption="quiet flute", genre="ambient", instrumental=True, prompt_source="genre")]
    save_dataset(replace(dataset, samples=edited), path)
    return load_dataset(path)


def add_new_songs(songs: Path, make_audio) -> None:
    """A new song with a captioner sidecar, one with a lyrics .txt; two.flac deleted."""
    make_audio(songs / "three.wav", seconds=2.0)
    (songs / "three.json").write_text(json.dumps({"caption": "new rock song", "genres": ["rock"], "bpm": "140",
                                                  "keyscale": "Em", "vocal_language": "German"}), encoding="utf-8")
    make_audio(songs / "sub" / "four.ogg", seconds=0.75)
    (songs / "sub" / "four.txt").write_text("[Chorus]\nnew words\n", encoding="utf-8")
    (songs / "sub" / "two.flac").unlink()


def test_update_keeps_edits_adds_new_songs_from_their_sidecars_and_lists_the_missing(songs, make_audio):
    existing = hand_edited(songs, songs / "dataset.json")
    before = [replace(sample) for sample in existing.samples]
    add_new_songs(songs, make_audio)
    progress = []

    result = update_dataset(existing, songs, language="fr", progress=lambda *args: progress.append(args))

    assert isinstance(result, UpdateResult)
    assert result.kept == [before[0]] and result.missing == [before[1]] and not result.dropped
    # the existing samples in their order, then the new ones in scan order
    assert [s.audio for s in result.dataset.samples] == ["one.wav", "sub/two.flac", "sub/four.ogg", "three.wav"]
    assert result.dataset.samples[:2] == before  # every field of both, edited or not, missing or not
    four, three = result.added
    assert result.dataset.samples[2:] == [four, three]
    assert (three.caption, three.genre, three.bpm, three.keyscale, three.language) == (
        "new rock song", "rock", 140.0, "E minor", "de")
    assert three.duration == pytest.approx(2.0)
    assert (four.lyrics, four.language, four.caption, four.duration) == ("[Chorus]\nnew words", "fr", "",
                                                                         pytest.approx(0.75))
    assert result.summary() == "1 kept, 2 added, 1 missing (left in the dataset)"
    assert result.failed == [] and result.warnings == [] and result.elsewhere == []
    assert [(done, total, path.name) for done, total, path in progress] == [(1, 2, "four.ogg"), (2, 2, "three.wav")]
    # the dataset's settings are its own, not a fresh build's
    d = result.dataset
    assert (d.name, d.trigger_tag, d.tag_position, d.genre_ratio, d.seed, d.root) == (
        "my set", "zx", "append", 0.5, 7, songs)
    # half the samples prompt with their genre: two.flac already does, so one new sample with a genre is drawn
    assert [s.prompt_source for s in d.samples] == ["caption", "genre", "caption", "genre"]
    assert existing.samples == before  # the input is unchanged

    save_dataset(result.dataset, songs / "dataset.json")
    assert load_dataset(songs / "dataset.json") == result.dataset


def test_missing_samples_are_dropped_only_when_asked(songs, make_audio):
    existing = hand_edited(songs, songs / "dataset.json")
    add_new_songs(songs, make_audio)

    result = update_dataset(existing, songs, drop_missing=True)

    assert [s.audio for s in result.dataset.samples] == ["one.wav", "sub/four.ogg", "three.wav"]
    assert [s.audio for s in result.missing] == ["sub/two.flac"] and result.dropped
    assert result.dataset.samples[0] == existing.samples[0]
    assert result.summary() == "1 kept, 2 added, 1 missing (removed from the dataset)"


def test_nothing_new_changes_nothing(songs):
    existing = hand_edited(songs, songs / "dataset.json")
    result = update_dataset(existing, songs, drop_missing=True)
    assert result.dataset == existing and result.added == [] and result.missing == []
    assert result.summary() == "2 kept, 0 added, 0 missing"


def test_a_dataset_saved_away_from_its_songs_matches_them_by_absolute_path(tmp_path, songs, make_audio):
    existing = hand_edited(songs, tmp_path / "datasets" / "set.json")
    assert Path(existing.samples[0].audio).is_absolute()
    make_audio(songs / "new.wav", seconds=0.5)
    elsewhere = make_audio(tmp_path / "other" / "far.wav", seconds=0.5)
    with_far = replace(existing, samples=[*existing.samples, Sample(elsewhere.as_posix(), caption="far away")])

    result = update_dataset(with_far, songs)

    assert [s.caption for s in result.kept] == ["reviewed by hand", "quiet flute", "far away"]
    assert [s.audio for s in result.added] == [(songs / "new.wav").as_posix()]  # the dataset's root is elsewhere
    assert [s.caption for s in result.elsewhere] == ["far away"] and result.missing == []
    save_dataset(result.dataset, tmp_path / "datasets" / "set.json")
    assert load_dataset(tmp_path / "datasets" / "set.json").samples[3].audio == (songs / "new.wav").as_posix()


def test_csv_rows_of_kept_songs_are_neither_applied_nor_reported(songs, make_audio):
    existing = hand_edited(songs, songs / "dataset.json")
    make_audio(songs / "three.wav", seconds=0.5)
    (songs / "meta.csv").write_text("file,caption,bpm\none.wav,csv caption,80\nthree.wav,csv three,90\n",
                                    encoding="utf-8")

    result = update_dataset(existing, songs)

    assert result.warnings == []
    assert result.dataset.samples[0] == existing.samples[0]  # not relabelled from the CSV
    assert [(s.caption, s.bpm) for s in result.added] == [("csv three", 90.0)]


def test_a_folder_with_none_of_the_datasets_songs_warns(songs, tmp_path, make_audio):
    existing = hand_edited(songs, songs / "dataset.json")
    make_audio(tmp_path / "other" / "x.wav", seconds=0.5)
    result = update_dataset(existing, tmp_path / "other")
    assert result.summary() == "2 kept, 1 added, 0 missing"
    assert len(result.elsewhere) == 2
    assert result.warnings == [f"none of the dataset's 2 sample(s) is in {tmp_path / 'other'}: "
                               "is it the folder the dataset was built from?"]


def test_bad_folders_languages_and_rootless_datasets_are_refused(songs, tmp_path):
    existing = hand_edited(songs, songs / "dataset.json")
    with pytest.raises(DatasetError, match="does not exist"):
        update_dataset(existing, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no audio files .* choose the folder the dataset's songs are in"):
        update_dataset(existing, tmp_path / "empty")
    with pytest.raises(DatasetError, match="Klingon"):
        update_dataset(existing, songs, language="Klingon")
    with pytest.raises(DatasetError, match="has no root folder"):
        update_dataset(replace(existing, root=None), songs)


# --- acestep-trainer build --update ----------------------------------------------------------


def test_cli_update_keeps_edits_and_saves_back(songs, make_audio, capsys):
    dataset = songs / "dataset.json"
    before = hand_edited(songs, dataset)
    add_new_songs(songs, make_audio)

    assert main(["build", str(songs), "--update", str(dataset)]) == 0
    out = capsys.readouterr().out
    assert f"Updated {dataset} from {songs}: 1 kept, 2 added, 1 missing (left in the dataset)." in out
    assert f"  missing: {songs / 'sub' / 'two.flac'}" in out and "pass --drop-missing" in out
    after = load_dataset(dataset)
    assert after.samples[:2] == before.samples and len(after.samples) == 4
    assert (after.name, after.trigger_tag, after.tag_position) == ("my set", "zx", "append")

    copy = songs / "copy.json"
    assert main(["build", str(songs), "--update", str(dataset), "--out", str(copy), "--drop-missing"]) == 0
    assert f"1 missing (removed from the dataset). Wrote {copy}." in capsys.readouterr().out
    assert [s.audio for s in load_dataset(copy).samples] == ["one.wav", "sub/four.ogg", "three.wav"]
    assert len(load_dataset(dataset).samples) == 4  # the source is not rewritten when --out names another file
    assert main(["build", str(songs), "--update", str(dataset), "--out", str(copy)]) == 1
    assert "pass --overwrite" in capsys.readouterr().err


def test_cli_update_refuses_new_settings_and_a_file_changed_meanwhile(songs, capsys, monkeypatch):
    dataset = songs / "dataset.json"
    hand_edited(songs, dataset)
    text = dataset.read_text(encoding="utf-8")
    assert main(["build", str(songs), "--update", str(dataset), "--tag", "new", "--seed", "1"]) == 1
    err = capsys.readouterr().err
    assert f"--tag, --seed: with --update the settings of {dataset} are kept" in err
    assert main(["build", str(songs), "--drop-missing", "--out", str(songs / "x.json")]) == 1
    assert "--drop-missing only applies with --update" in capsys.readouterr().err
    assert main(["build", str(songs)]) == 1
    assert "pass --out DATASET.json" in capsys.readouterr().err
    assert main(["build", str(songs), "--out", str(dataset)]) == 1
    assert f"--update {dataset}" in capsys.readouterr().err
    assert dataset.read_text(encoding="utf-8") == text

    # someone saves the file between the read and the write: the update is refused, their save stays
    import acestep.dataset.update as update_module

    real = update_module.update_dataset

    def meanwhile(*args, **kwargs):
        dataset.write_text(text.replace("reviewed by hand", "their edit"), encoding="utf-8")
        return real(*args, **kwargs)

    monkeypatch.setattr(update_module, "update_dataset", meanwhile)
    assert main(["build", str(songs), "--update", str(dataset)]) == 1
    assert "was changed by someone else since you loaded it" in capsys.readouterr().err
    assert load_dataset(dataset).samples[0].caption == "their edit"


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"version": 1, "samples": [{"audio": "one.wav", "bpm": "fast"}]}', r"sample 0 \(one.wav\): bpm must be"),
])
def test_a_bad_existing_dataset_is_refused_naming_the_file(songs, capsys, content, message):
    bad = songs / "bad.json"
    bad.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError, match=rf"{re.escape(str(bad))}: .*{message}"):
        load_dataset_revision(bad)
    assert main(["build", str(songs), "--update", str(bad)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and re.search(message, err)
    assert bad.read_text(encoding="utf-8") == content  # left as it was
