"""Stale-save detection: a save based on an older version of the dataset file than the one on disk
is refused and writes nothing; without an expected revision saving works as before."""

import hashlib
import json
import threading

import pytest

from acestep.dataset import (
    Dataset,
    Sample,
    dataset_revision,
    load_dataset,
    load_dataset_revision,
    save_dataset,
    save_dataset_revision,
)
from acestep.errors import DatasetError


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "set.json"
    save_dataset(Dataset("set", [Sample("a.wav", caption="piano"), Sample("b.wav", caption="drums")]), path)
    return path


def test_revision_is_the_sha256_of_the_file_and_load_returns_it(saved):
    dataset, revision = load_dataset_revision(saved)
    assert revision == hashlib.sha256(saved.read_bytes()).hexdigest()
    assert dataset_revision(saved) == revision
    assert dataset == load_dataset(saved)
    assert dataset_revision(saved.parent / "missing.json") is None


def test_save_with_the_loaded_revision_writes_and_returns_the_new_revision(saved):
    dataset, revision = load_dataset_revision(saved)
    dataset.samples[0].caption = "grand piano"
    path, new_revision = save_dataset_revision(dataset, saved, expected_revision=revision)
    assert path == saved
    assert new_revision != revision
    assert new_revision == hashlib.sha256(saved.read_bytes()).hexdigest()
    assert json.loads(saved.read_text())["samples"][0]["caption"] == "grand piano"
    # The returned revision is what the next save expects.
    dataset.samples[1].caption = "brushed drums"
    save_dataset(dataset, saved, expected_revision=new_revision)
    assert load_dataset(saved).samples[1].caption == "brushed drums"


def test_a_save_based_on_an_older_version_is_refused_and_writes_nothing(saved):
    ann, ann_revision = load_dataset_revision(saved)
    bob, bob_revision = load_dataset_revision(saved)
    ann.samples[0].caption = "ann's edit"
    save_dataset(ann, saved, expected_revision=ann_revision)
    on_disk = saved.read_bytes()

    bob.samples[1].caption = "bob's edit"
    with pytest.raises(DatasetError) as refused:
        save_dataset(bob, saved, expected_revision=bob_revision)
    message = str(refused.value)
    assert str(saved) in message
    assert "changed by someone else since you loaded it" in message
    assert "not written" in message and "Reload" in message
    assert saved.read_bytes() == on_disk
    assert [s.caption for s in load_dataset(saved).samples] == ["ann's edit", "drums"]
    assert sorted(p.name for p in saved.parent.iterdir()) == ["set.json"]  # no temp file left behind


def test_a_save_of_a_file_deleted_since_it_was_loaded_is_refused(saved):
    dataset, revision = load_dataset_revision(saved)
    saved.unlink()
    with pytest.raises(DatasetError, match="was deleted since you loaded it"):
        save_dataset(dataset, saved, expected_revision=revision)
    assert not saved.exists()


def test_without_an_expected_revision_a_save_overwrites_as_before(saved):
    dataset, _ = load_dataset_revision(saved)
    saved.write_text(saved.read_text().replace("drums", "changed elsewhere"), encoding="utf-8")
    dataset.samples[0].caption = "mine"
    save_dataset(dataset, saved)
    assert [s.caption for s in load_dataset(saved).samples] == ["mine", "drums"]


def test_two_saves_from_the_same_revision_at_once_let_exactly_one_through(saved):
    _, revision = load_dataset_revision(saved)
    outcomes: list[str] = []
    start = threading.Barrier(8)

    def save(caption: str) -> None:
        dataset = load_dataset(saved)
        dataset.samples[0].caption = caption
        start.wait()
        try:
            save_dataset(dataset, saved, expected_revision=revision)
            outcomes.append(caption)
        except DatasetError:
            outcomes.append("refused")

    threads = [threading.Thread(target=save, args=(f"edit {i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [outcome for outcome in outcomes if outcome != "refused"]
    assert len(winners) == 1
    assert load_dataset(saved).samples[0].caption == winners[0]
