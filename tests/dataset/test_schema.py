"""The dataset JSON: round trip, atomic save, validation messages, version-0 migration, captions
and seeded prompt sources."""

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acestep.dataset import (
    DATASET_VERSION,
    VALID_LANGUAGES,
    Dataset,
    Sample,
    assign_prompt_sources,
    load_dataset,
    save_dataset,
    training_caption,
)
from acestep.errors import DatasetError


def make_dataset(root: Path) -> Dataset:
    return Dataset(
        name="my songs",
        samples=[
            Sample("songs/a.mp3", caption="dreamy synth pop", genre="pop, synth", lyrics="[Verse]\nla la",
                   bpm=120.0, keyscale="A minor", timesignature="4", language="en", duration=31.5),
            Sample("songs/deep/b.flac", caption="piano", instrumental=True, prompt_source="genre", genre="classical"),
            Sample("c.wav", caption="ünïcode ✓ 日本語", language="ja"),
        ],
        trigger_tag="mystyle",
        tag_position="append",
        genre_ratio=0.25,
        seed=7,
        root=root,
    )


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def minimal(**sample) -> dict:
    return {"version": 1, "name": "x", "samples": [{"audio": "songs/a.mp3", **sample}]}


# --- round trip and file format ---------------------------------------------------------------


def test_round_trip_is_equal_and_file_is_versioned_relative_posix(tmp_path):
    dataset = make_dataset(tmp_path)
    written = save_dataset(dataset, tmp_path / "dataset.json")

    assert written == tmp_path / "dataset.json"
    assert load_dataset(written) == dataset
    raw = json.loads(written.read_text(encoding="utf-8"))
    assert raw["version"] == DATASET_VERSION == 1
    assert [s["audio"] for s in raw["samples"]] == ["songs/a.mp3", "songs/deep/b.flac", "c.wav"]
    assert "root" not in raw
    text = written.read_text(encoding="utf-8")
    assert "日本語" in text  # UTF-8, not \u escapes
    assert text.startswith('{\n  "version": 1,')  # indent 2


def test_save_elsewhere_rebases_paths_to_the_new_folder(tmp_path):
    dataset = make_dataset(tmp_path / "audio")
    above = save_dataset(dataset, tmp_path / "above.json")
    assert [s["audio"] for s in json.loads(above.read_text(encoding="utf-8"))["samples"]] == [
        "audio/songs/a.mp3", "audio/songs/deep/b.flac", "audio/c.wav"]

    beside = save_dataset(dataset, tmp_path / "out" / "ds.json")
    raw = json.loads(beside.read_text(encoding="utf-8"))
    assert raw["samples"][0]["audio"] == (tmp_path / "audio" / "songs" / "a.mp3").as_posix()

    for written in (above, beside):
        loaded = load_dataset(written)
        assert loaded.root == written.parent
        assert [loaded.audio_path(s) for s in loaded.samples] == [
            tmp_path / "audio" / p for p in ("songs/a.mp3", "songs/deep/b.flac", "c.wav")]


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    target = tmp_path / "dataset.json"
    save_dataset(make_dataset(tmp_path), target)
    before = target.read_bytes()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("acestep.dataset.schema.os.replace", broken_replace)
    changed = make_dataset(tmp_path)
    changed.name = "changed"
    with pytest.raises(DatasetError, match="the disk is full"):
        save_dataset(changed, target)

    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset.json"]


def test_save_refuses_an_invalid_dataset_and_writes_nothing(tmp_path):
    dataset = make_dataset(tmp_path)
    dataset.samples[1].bpm = 900.0
    with pytest.raises(DatasetError, match=r"sample 1 \(songs/deep/b.flac\): bpm must be above 0 and below 400"):
        save_dataset(dataset, tmp_path / "dataset.json")
    assert list(tmp_path.iterdir()) == []


def test_audio_path_is_root_relative_and_needs_a_root(tmp_path):
    dataset = make_dataset(tmp_path)
    assert dataset.audio_path(dataset.samples[0]) == tmp_path / "songs" / "a.mp3"
    dataset.root = None
    with pytest.raises(DatasetError, match="no root folder"):
        dataset.audio_path(dataset.samples[0])


def test_minimal_file_gets_defaults_and_backslashes_become_slashes(tmp_path):
    path = write_json(tmp_path / "mini.json", {"version": 1, "samples": [{"audio": "songs\\a.mp3"}]})
    dataset = load_dataset(path)
    assert dataset.name == "mini"
    assert dataset.tag_position == "prepend"
    assert dataset.samples == [Sample("songs/a.mp3")]


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(minimal()).encode())
    assert load_dataset(path).samples[0].audio == "songs/a.mp3"


# --- validation messages ----------------------------------------------------------------------


@pytest.mark.parametrize("sample, message", [
    ({"bpm": "fast"}, r"sample 0 \(songs/a.mp3\): bpm must be a number or null, found 'fast'"),
    ({"bpm": 0}, r"sample 0 \(songs/a.mp3\): bpm must be above 0 and below 400, found 0"),
    ({"bpm": 400}, r"bpm must be above 0 and below 400, found 400"),
    ({"bpm": True}, r"bpm must be a number or null, found true"),
    ({"caption": 5}, r"sample 0 \(songs/a.mp3\): caption must be text, found 5"),
    ({"lyrics": None}, r"lyrics must be text, found null"),
    ({"language": "english"}, r"language must be one of ar, az, .*unknown, found 'english'"),
    ({"instrumental": "yes"}, r"instrumental must be true or false, found 'yes'"),
    ({"prompt_source": "lyrics"}, r"prompt_source must be one of caption, genre, found 'lyrics'"),
    ({"duration": -3}, r"duration must be a positive number of seconds, found -3"),
    ({"captoin": "typo"}, r"unknown field\(s\) 'captoin'; a sample has audio, caption"),
    ({"audio": ""}, r"sample 0: audio must be a non-empty path, found ''"),
    ({"audio": 3}, r"sample 0: audio must be a non-empty path, found 3"),
])
def test_malformed_sample_names_file_sample_and_field(tmp_path, sample, message):
    path = write_json(tmp_path / "dataset.json", minimal(**sample))
    with pytest.raises(DatasetError, match=message) as caught:
        load_dataset(path)
    assert str(caught.value).startswith(f"{path}: sample 0")


@pytest.mark.parametrize("data, message", [
    ([1, 2], r"must hold a JSON object .*found a list"),
    ("text", r"must hold a JSON object .*found text"),
    ({"version": 1}, r'has no "samples" list'),
    ({"version": 1, "samples": {}}, r"samples must be a list, found an object"),
    ({"version": "1", "samples": []}, r"version must be a whole number, found '1'"),
    ({"version": 2, "samples": []}, r"newer trainer \(dataset version 2"),
    ({"samples": [{"audio": "a.wav"}]}, r'has no "version" field'),
    ({"version": 1, "samples": [], "tag_position": "middle"}, r"tag_position must be one of prepend, append, replace"),
    ({"version": 1, "samples": [], "genre_ratio": 30}, r"genre_ratio must be a number from 0 to 1, found 30"),
    ({"version": 1, "samples": [], "seed": 1.5}, r"seed must be a whole number, found 1.5"),
    ({"version": 1, "samples": [], "extra": 1}, r"unknown field\(s\) 'extra'"),
    ({"version": 1, "samples": ["a.wav"]}, r"sample 0: must be an object with an \"audio\" path, found text"),
    ({"version": 1, "samples": [{"caption": "no audio"}]}, r'sample 0: has no "audio" field'),
    ({"version": 1, "samples": [{"audio": "a.wav"}, {"audio": "a.wav"}]},
     r"sample 1 \(a.wav\): audio repeats sample 0"),
])
def test_malformed_dataset_names_file_and_field(tmp_path, data, message):
    path = write_json(tmp_path / "dataset.json", data)
    with pytest.raises(DatasetError, match=message) as caught:
        load_dataset(path)
    assert str(caught.value).startswith(str(path))


def test_invalid_json_missing_file_and_folder_are_dataset_errors(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": 1, "samples": [', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"broken.json: not valid JSON: .* line 1, column 28"):
        load_dataset(broken)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "missing.json")
    with pytest.raises(DatasetError, match="is a folder"):
        load_dataset(tmp_path)
    latin = tmp_path / "latin.json"
    latin.write_bytes('{"name": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(DatasetError, match="latin.json: not UTF-8"):
        load_dataset(latin)
    nan = write_json(tmp_path / "nan.json", minimal(bpm=float("nan")))
    with pytest.raises(DatasetError, match="bpm must be a finite number, found NaN"):
        load_dataset(nan)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
# Values near the valid ones, so that a mutation often gets past the first check.
plausible = st.sampled_from(["", "en", "English", "genre", "caption", "prepend", "120", "N/A", "[Instrumental]",
                             "instrumental", "a.wav", "/abs/b.wav", "C:\\x\\c.wav", 0, 1, 120, 0.5, 100, -1,
                             True, False, None, float("nan"), float("inf"), 10**30])
VALID_V1 = {"version": 1, "name": "n", "trigger_tag": "t", "tag_position": "prepend", "genre_ratio": 0.5, "seed": 1,
            "samples": [{"audio": "a.wav", "caption": "c", "genre": "g", "lyrics": "l", "bpm": 120,
                         "keyscale": "C major", "timesignature": "4", "language": "en", "instrumental": False,
                         "duration": 10.0, "prompt_source": "caption"}, {"audio": "b.wav"}]}
VALID_V0 = {"metadata": {"name": "n", "custom_tag": "t", "tag_position": "append", "genre_ratio": 30},
            "samples": [{"audio_path": "a.wav", "caption": "c", "genre": "g", "lyrics": "[Instrumental]", "bpm": 120,
                         "keyscale": "C major", "timesignature": 4, "duration": 12, "language": "en",
                         "is_instrumental": True, "prompt_override": None, "custom_tag": "t"},
                        {"audio_path": "b.wav", "genre": "g2"}]}
SAMPLE_KEYS = sorted({*VALID_V1["samples"][0], *VALID_V0["samples"][0], "raw_lyrics", "extra"})
TOP_KEYS = sorted({*VALID_V1, *VALID_V0, "extra"})


@st.composite
def mutated_dataset(draw):
    """A valid v1 or v0 dataset with a few fields (top level, metadata or a sample) replaced."""
    data = json.loads(json.dumps(draw(st.sampled_from([VALID_V1, VALID_V0]))))
    for _ in range(draw(st.integers(1, 3))):
        value = draw(plausible | json_values)
        where = draw(st.sampled_from(["top", "metadata", "sample", "delete"]))
        samples = data.get("samples") if isinstance(data.get("samples"), list) else []
        if where == "top":
            data[draw(st.sampled_from(TOP_KEYS))] = value
        elif where == "metadata" and isinstance(data.get("metadata"), dict):
            data["metadata"][draw(st.sampled_from(["name", "custom_tag", "tag_position", "genre_ratio"]))] = value
        elif where == "sample" and samples and isinstance(samples[0], dict):
            samples[draw(st.integers(0, len(samples) - 1))] = {**samples[0], draw(st.sampled_from(SAMPLE_KEYS)): value}
        elif where == "delete" and samples and isinstance(samples[-1], dict) and samples[-1]:
            samples[-1].pop(draw(st.sampled_from(sorted(samples[-1]))))
    return data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=json_values | mutated_dataset())
def test_any_json_loads_or_raises_dataset_error_and_file_is_untouched(tmp_path, data):
    path = tmp_path / "fuzz.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    before = path.read_bytes()
    try:
        dataset = load_dataset(path)
    except DatasetError as error:
        assert str(path) in str(error)
    else:
        assert isinstance(dataset, Dataset)
        assert all(isinstance(s, Sample) and s.language in VALID_LANGUAGES for s in dataset.samples)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["fuzz.json"]


# --- version 0 (official ACE-Step 1.5 / Estylon trainer) -------------------------------------


def version_0(root: Path) -> dict:
    """A dataset as upstream's / Estylon's `save_dataset` writes it (`metadata` + `samples`)."""
    def sample(path, **values):
        return {"id": "ab12cd34", "audio_path": path, "filename": Path(path).name, "caption": "", "genre": "",
                "lyrics": "[Instrumental]", "raw_lyrics": "", "formatted_lyrics": "", "bpm": None,
                "keyscale": "", "timesignature": "", "duration": 0, "language": "unknown",
                "is_instrumental": True, "custom_tag": "zx_style", "labeled": False, "prompt_override": None,
                **values}

    return {
        "metadata": {"name": "old set", "custom_tag": "zx_style", "tag_position": "replace",
                     "created_at": "2026-02-14T20:48:00", "num_samples": 3, "all_instrumental": False,
                     "genre_ratio": 50},
        "samples": [
            sample(str(root / "songs" / "one.mp3"), caption="energetic rock", genre="rock, guitar",
                   lyrics="[Verse]\nhello", raw_lyrics="[Verse]\nhello", bpm=128, keyscale="E minor",
                   timesignature="4", duration=183, language="en", is_instrumental=False, labeled=True,
                   prompt_override="genre"),
            sample("songs\\two.wav", caption="calm piano", genre="classical", bpm=72, labeled=True,
                   prompt_override="caption"),
            sample("/elsewhere/three.flac", caption="ambient", genre="ambient", language="instrumental"),
            sample(str(root / "four.ogg"), caption="lofi beat", genre="lofi, hip hop", duration=95,
                   lyrics="", raw_lyrics="la la", is_instrumental=False),
        ],
    }


def test_version_0_migrates_with_its_values(tmp_path):
    path = write_json(tmp_path / "old.json", version_0(tmp_path))
    dataset = load_dataset(path)

    assert (dataset.name, dataset.trigger_tag, dataset.tag_position) == ("old set", "zx_style", "replace")
    assert dataset.genre_ratio == 0.5 and dataset.seed == 42
    one, two, three, four = dataset.samples
    assert one == Sample("songs/one.mp3", caption="energetic rock", genre="rock, guitar", lyrics="[Verse]\nhello",
                         bpm=128.0, keyscale="E minor", timesignature="4", language="en", instrumental=False,
                         duration=183.0, prompt_source="genre")
    assert (two.audio, two.bpm, two.lyrics, two.instrumental, two.duration, two.prompt_source) == (
        "songs/two.wav", 72.0, "", True, None, "caption")
    assert (three.audio, three.language, three.instrumental) == ("/elsewhere/three.flac", "unknown", True)
    assert (four.audio, four.lyrics, four.instrumental, four.duration) == ("four.ogg", "la la", False, 95.0)
    # Samples three and four had no override: the 50 % ratio draws one of the two for genre.
    assert sorted([three.prompt_source, four.prompt_source]) == ["caption", "genre"]
    # Saving writes version 1; loading that gives the same dataset.
    assert load_dataset(save_dataset(dataset, tmp_path / "new.json")) == dataset
    assert "audio_path" not in (tmp_path / "new.json").read_text(encoding="utf-8")


def test_version_0_uses_sample_tags_when_metadata_has_none_and_refuses_mixed_tags(tmp_path):
    data = version_0(tmp_path)
    data["metadata"]["custom_tag"] = ""
    assert load_dataset(write_json(tmp_path / "a.json", data)).trigger_tag == "zx_style"

    data["samples"][1]["custom_tag"] = "other"
    with pytest.raises(DatasetError, match=r"different custom_tag values \('zx_style' \(sample 0\), 'other'"):
        load_dataset(write_json(tmp_path / "b.json", data))


@pytest.mark.parametrize("change, message", [
    ({"bpm": "fast"}, r"sample 1 \(songs\\two.wav\): bpm must be a number, found 'fast'"),
    ({"language": "klingon"}, r"sample 1 .*language must be one of the ACE-Step codes"),
    ({"prompt_override": "both"}, r"sample 1 .*prompt_override must be null"),
    ({"audio_path": ""}, r"sample 1: audio_path must be a non-empty path"),
])
def test_malformed_version_0_names_sample_and_field(tmp_path, change, message):
    data = version_0(tmp_path)
    data["samples"][1].update(change)
    with pytest.raises(DatasetError, match=message):
        load_dataset(write_json(tmp_path / "old.json", data))


def test_version_0_genre_ratio_is_a_percentage(tmp_path):
    data = version_0(tmp_path)
    data["metadata"]["genre_ratio"] = 150
    with pytest.raises(DatasetError, match=r"metadata.genre_ratio must be a percentage from 0 to 100, found 150"):
        load_dataset(write_json(tmp_path / "old.json", data))


# --- training captions ------------------------------------------------------------------------


@pytest.mark.parametrize("position, expected", [
    ("prepend", "zx, dreamy pop"),
    ("append", "dreamy pop, zx"),
    ("replace", "zx"),
])
def test_training_caption_positions(position, expected):
    assert training_caption(Sample("a.wav", caption="dreamy pop"), "zx", position) == expected


def test_training_caption_edge_cases():
    assert training_caption(Sample("a.wav", caption="dreamy pop"), "", "replace") == "dreamy pop"
    assert training_caption(Sample("a.wav", caption="dreamy pop"), "  ", "prepend") == "dreamy pop"
    assert training_caption(Sample("a.wav"), "zx", "replace") == "zx"
    assert training_caption(Sample("a.wav"), "zx", "prepend") == "zx"
    assert training_caption(Sample("a.wav"), "", "prepend") == ""
    genre = Sample("a.wav", caption="dreamy pop", genre="pop, synth", prompt_source="genre")
    assert training_caption(genre, "zx", "prepend") == "zx, pop, synth"
    # Each source falls back to the other when empty.
    assert training_caption(Sample("a.wav", caption="only caption", prompt_source="genre"), "", "prepend") == (
        "only caption")
    assert training_caption(Sample("a.wav", genre="only genre"), "zx", "append") == "only genre, zx"
    with pytest.raises(DatasetError, match="tag_position must be one of"):
        training_caption(genre, "zx", "middle")


# --- prompt sources ---------------------------------------------------------------------------


def ten_samples(without_genre=()) -> Dataset:
    samples = [Sample(f"{i}.wav", caption=f"c{i}", genre="" if i in without_genre else f"g{i}") for i in range(10)]
    return Dataset("ten", samples)


def genre_indices(dataset: Dataset) -> list[int]:
    return [i for i, s in enumerate(dataset.samples) if s.prompt_source == "genre"]


def test_genre_ratio_picks_exactly_round_ratio_times_n():
    dataset = ten_samples()
    result = assign_prompt_sources(dataset, 0.3, seed=1)
    assert len(genre_indices(result)) == 3
    assert (result.genre_ratio, result.seed) == (0.3, 1)
    assert genre_indices(dataset) == []  # the input is not modified
    assert len(genre_indices(assign_prompt_sources(dataset, 0.25, seed=1))) == 3  # 2.5 rounds up
    assert genre_indices(assign_prompt_sources(dataset, 0.0)) == []
    assert genre_indices(assign_prompt_sources(dataset, 1.0)) == list(range(10))


def test_genre_choice_is_seeded():
    dataset = ten_samples()
    first = genre_indices(assign_prompt_sources(dataset, 0.3, seed=5))
    assert genre_indices(assign_prompt_sources(dataset, 0.3, seed=5)) == first
    others = {tuple(genre_indices(assign_prompt_sources(dataset, 0.3, seed=s))) for s in range(6, 26)}
    assert len(others - {tuple(first)}) >= 10  # different seeds pick different samples


def test_samples_without_genre_never_get_genre():
    dataset = ten_samples(without_genre={0, 2, 4, 6, 8})
    for seed in range(20):
        chosen = genre_indices(assign_prompt_sources(dataset, 0.3, seed=seed))
        assert len(chosen) == 3 and all(i % 2 == 1 for i in chosen)
    # Asking for more than have a genre gives all of those.
    assert genre_indices(assign_prompt_sources(dataset, 0.9)) == [1, 3, 5, 7, 9]


def test_assign_uses_the_datasets_own_ratio_and_refuses_bad_ratios():
    dataset = ten_samples()
    dataset.genre_ratio, dataset.seed = 0.5, 3
    assert genre_indices(assign_prompt_sources(dataset)) == genre_indices(assign_prompt_sources(dataset, 0.5, 3))
    with pytest.raises(DatasetError, match="genre_ratio must be a number from 0 to 1, found 1.5"):
        assign_prompt_sources(dataset, 1.5)


# --- languages --------------------------------------------------------------------------------


def test_language_list_is_the_official_one_and_names_map_to_codes():
    from acestep.dataset import parse_language

    assert len(VALID_LANGUAGES) == 51 and VALID_LANGUAGES[-1] == "unknown"
    assert {"en", "zh", "yue", "ja", "ht", "sa"} <= set(VALID_LANGUAGES)
    assert [parse_language(v) for v in ("EN", " english ", "Cantonese", "", "unknown")] == [
        "en", "en", "yue", "unknown", "unknown"]
    with pytest.raises(ValueError, match="found 'Elvish'"):
        parse_language("Elvish")


def test_lyrics_with_windows_line_breaks_load_with_newlines(tmp_path):
    path = tmp_path / "ds.json"
    save_dataset(make_dataset(tmp_path), path)
    data = json.loads(path.read_text())
    data["samples"][0]["lyrics"] = "[Verse]\r\nla la\rla"
    path.write_text(json.dumps(data))
    assert load_dataset(path).samples[0].lyrics == "[Verse]\nla la\nla"
