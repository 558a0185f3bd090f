"""Bulk tag edits (`acestep/dataset/tags.py`): whole tags only, any case, chosen samples, and the
dataset left as it was when nothing changes."""

import pytest

from acestep.dataset import Dataset, Sample
from acestep.dataset.tags import add_tag, edit_tags, parse_selection, remove_tag
from acestep.errors import DatasetError


def test_tag_helpers_and_sample_selection():
    assert add_tag("piano, calm", "Lofi") == "piano, calm, Lofi"
    assert add_tag("piano, LOFI", "lofi") == "piano, LOFI"
    assert add_tag("", "lofi") == "lofi"
    assert remove_tag("piano,  lofi , calm, Lofi", "LOFI") == "piano, calm"
    assert remove_tag("a lofi song", "lofi") == "a lofi song"  # whole tags only
    assert parse_selection("", 4) == [0, 1, 2, 3]
    assert parse_selection("3, 1-2; 2", 4) == [0, 1, 2]
    with pytest.raises(DatasetError, match="'5' is outside 1-4"):
        parse_selection("5", 4)
    with pytest.raises(DatasetError, match="'x' is not a number"):
        parse_selection("1, x", 4)


def test_edit_tags_counts_what_changed_and_keeps_an_unchanged_dataset():
    dataset = Dataset("d", [Sample("a.wav", caption="piano"), Sample("b.wav", caption="piano, lofi", genre="jazz"),
                            Sample("c.wav")])
    result = edit_tags(dataset, "add", " lofi, ", "caption")
    assert [s.caption for s in result.dataset.samples] == ["piano, lofi", "piano, lofi", "lofi"]
    assert (result.changed, result.selected, result.message) == (2, 3, "Added 'lofi' in 2 of 3 sample(s).")
    assert [s.caption for s in dataset.samples] == ["piano", "piano, lofi", ""]  # a new dataset, this one as it was
    result = edit_tags(dataset, "remove", "JAZZ", "caption and genre", "1-2")
    assert [s.genre for s in result.dataset.samples] == ["", "", ""] and result.changed == 1
    unchanged = edit_tags(dataset, "remove", "rock", "genre")
    assert unchanged.dataset is dataset and unchanged.changed == 0
    with pytest.raises(DatasetError, match="field one of caption, genre, caption and genre"):
        edit_tags(dataset, "add", "x", "lyrics")


@pytest.mark.parametrize("action", ["add", "remove"])
def test_a_tag_with_a_comma_is_refused_before_anything_changes(action):
    dataset = Dataset("d", [Sample("a.wav", caption="piano, lofi, chill")])
    with pytest.raises(DatasetError, match=rf"several tags .* {action} 'lofi' and 'chill' one at a time"):
        edit_tags(dataset, action, "lofi, chill", "caption")
