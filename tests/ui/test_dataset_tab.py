"""The Dataset tab's functions on real recorded loops in a real workspace: scan, scan new songs into
an open dataset, edit, remove, bulk tags, report, save, the path check, and two browsers saving the
same dataset."""

import hashlib
import json
import shutil

import gradio as gr
import pytest

from acestep.dataset import Dataset, Sample
from acestep.errors import DatasetError
from acestep.ui.context import AppContext, PathRefused, Workspace
from acestep.ui.dataset_edits import (
    OpenDataset,
    apply_sample_edit,
    apply_settings,
    dataset_choices,
    dataset_files,
    edit_tags,
    open_dataset,
    remove_sample,
    report_markdown,
    sample_rows,
    sample_view,
    save_open_dataset,
    scan_folder,
    scan_into_open,
    songs_folder,
    status_text,
)
from acestep.ui.dataset_tab import COLUMN_WIDTHS, HEADERS, build_dataset_tab
from acestep.ui.dropdowns import reopened_choices
from acestep.ui.jobs_panel import warn_refusals

LOOPS = ("drum_roll", "guit_e_slide", "loop_amen_full")  # sorted, as the scan lists them


@pytest.fixture
def workspace(tmp_path, real_loops):
    workspace = Workspace(tmp_path / "ws", checkpoints=tmp_path / "checkpoints").create()
    (workspace.audio / "loops").mkdir()
    for name in LOOPS:
        shutil.copy(real_loops[name], workspace.audio / "loops" / f"{name}.flac")
    return workspace


@pytest.fixture
def scanned(workspace):
    opened, _ = scan_folder(workspace, "audio/loops", trigger_tag="mystyle")
    return opened


def edit_caption(opened, index, caption):
    s = opened.dataset.samples[index]
    return apply_sample_edit(opened, index, caption, s.genre, s.lyrics, s.bpm, s.keyscale, s.timesignature,
                             s.language, s.instrumental)


def test_scan_a_folder_of_real_audio_gives_one_row_per_file(workspace):
    opened, summary = scan_folder(workspace, "audio/loops", name="drums", trigger_tag="mystyle",
                                  tag_position="append", all_instrumental=True, language="English")
    rows = sample_rows(opened.dataset)
    assert [row[0] for row in rows] == [1, 2, 3]
    assert all(len(row) == len(HEADERS) == len(COLUMN_WIDTHS) for row in rows)
    assert sum(int(width.rstrip("%")) for width in COLUMN_WIDTHS) == 100
    assert [row[1] for row in rows] == [f"{name}.flac" for name in LOOPS]
    assert [float(row[10]) for row in rows] == pytest.approx([6.2, 4.3, 6.9], abs=0.1)
    assert {row[8] for row in rows} == {"en"} and {row[9] for row in rows} == {"yes"}
    assert (opened.dataset.name, opened.dataset.trigger_tag, opened.dataset.tag_position) == ("drums", "mystyle",
                                                                                              "append")
    assert opened.path is None and opened.revision is None and opened.unsaved
    assert "Found **3** sample(s) in `audio/loops`" in summary
    assert "not saved yet" in status_text(workspace, opened)


def test_scan_and_load_refuse_paths_outside_the_workspace(workspace, tmp_path, real_loops):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(real_loops["drum_roll"], outside / "drum_roll.flac")
    with pytest.raises(PathRefused, match="outside the folders this app may use"):
        scan_folder(workspace, str(outside))
    with pytest.raises(PathRefused, match="outside the folders"):
        open_dataset(workspace, "../elsewhere/set.json")
    with pytest.raises(PathRefused, match="does not exist"):
        scan_folder(workspace, "audio/nothing-here")


def test_edit_a_sample_and_save_writes_the_edit_to_disk(workspace, scanned):
    s = scanned.dataset.samples[1]
    edited = apply_sample_edit(scanned, 1, " slide guitar, blues ", "blues", "", "96 BPM", "Em", "4/4", "English",
                               True)
    assert scanned.dataset.samples[1] == s  # the state it came from is untouched

    saved, message = save_open_dataset(workspace, edited, "datasets/loops.json")
    path = workspace.datasets / "loops.json"
    assert message == "Saved 3 sample(s) to `datasets/loops.json`."
    assert saved.path == path and not saved.unsaved
    assert saved.revision == hashlib.sha256(path.read_bytes()).hexdigest()
    sample = json.loads(path.read_text(encoding="utf-8"))["samples"][1]
    assert sample["caption"] == "slide guitar, blues" and sample["genre"] == "blues"
    assert (sample["bpm"], sample["keyscale"], sample["timesignature"]) == (96.0, "E minor", "4")
    assert (sample["language"], sample["instrumental"]) == ("en", True)
    assert sample["audio"] == (workspace.audio / "loops" / "guit_e_slide.flac").as_posix()
    assert dataset_choices(workspace) == ["datasets/loops.json"]
    # the saved file lists absolute paths (its songs lie elsewhere); the table shows them from their folder
    loaded = open_dataset(workspace, "datasets/loops.json")
    assert [row[1] for row in sample_rows(loaded.dataset)] == [f"{name}.flac" for name in LOOPS]
    assert f"3 sample(s), audio in `{workspace.audio / 'loops'}`" in status_text(workspace, loaded)
    assert "audio in" not in status_text(workspace, scanned)  # relative paths are shown as they are


def test_a_bad_value_in_the_editor_names_the_sample_and_field(scanned):
    s = scanned.dataset.samples[0]
    with pytest.raises(DatasetError, match=r"sample 1 \(drum_roll.flac\): bpm must be a number, found 'fast'"):
        apply_sample_edit(scanned, 0, "", "", "", "fast", "", "", "unknown", False)
    with pytest.raises(DatasetError, match="sample 1 .*language must be one of"):
        apply_sample_edit(scanned, 0, s.caption, "", "", None, "", "", "Klingon", False)
    with pytest.raises(DatasetError, match="Pick a sample"):
        apply_sample_edit(scanned, 3, "", "", "", None, "", "", "unknown", False)


def test_load_edit_and_save_back_then_a_stale_save_is_refused_and_the_file_is_unchanged(workspace, scanned):
    save_open_dataset(workspace, scanned, "datasets/loops.json")
    ann = open_dataset(workspace, "datasets/loops.json")
    bob = open_dataset(workspace, str(workspace.datasets / "loops.json"))
    assert ann.revision == bob.revision

    ann, _ = save_open_dataset(workspace, edit_caption(ann, 0, "ann's drums"), "datasets/loops.json")
    on_disk = (workspace.datasets / "loops.json").read_bytes()
    with pytest.raises(DatasetError) as refused:
        save_open_dataset(workspace, edit_caption(bob, 2, "bob's amen"), "datasets/loops.json")
    assert "was changed by someone else since you loaded it" in str(refused.value)
    assert "not written" in str(refused.value) and "Reload" in str(refused.value)
    assert (workspace.datasets / "loops.json").read_bytes() == on_disk

    # Ann saves again on top of her own save; Bob reloads, sees her edit, and can save.
    ann, _ = save_open_dataset(workspace, edit_caption(ann, 1, "ann's guitar"), "datasets/loops.json")
    bob = open_dataset(workspace, "datasets/loops.json")
    assert [s.caption for s in bob.dataset.samples] == ["ann's drums", "ann's guitar", ""]
    save_open_dataset(workspace, edit_caption(bob, 2, "bob's amen"), "datasets/loops.json")
    captions = [s["caption"] for s in json.loads((workspace.datasets / "loops.json").read_text())["samples"]]
    assert captions == ["ann's drums", "ann's guitar", "bob's amen"]


def test_saving_over_another_file_needs_overwrite_and_outside_paths_are_refused(workspace, scanned, tmp_path):
    (workspace.datasets / "other.json").write_text("{}", encoding="utf-8")
    with pytest.raises(DatasetError, match="already exists: tick Overwrite"):
        save_open_dataset(workspace, scanned, "datasets/other.json")
    assert (workspace.datasets / "other.json").read_text() == "{}"
    save_open_dataset(workspace, scanned, "datasets/other.json", overwrite=True)
    assert len(json.loads((workspace.datasets / "other.json").read_text())["samples"]) == 3

    with pytest.raises(PathRefused, match="outside the folders"):
        save_open_dataset(workspace, scanned, str(tmp_path / "outside.json"))
    assert not (tmp_path / "outside.json").exists()
    with pytest.raises(DatasetError, match="ends in .json"):
        save_open_dataset(workspace, scanned, "datasets/loops.txt")


def test_bulk_tag_edit_adds_and_removes_in_selected_samples(scanned):
    edited, message = edit_tags(scanned, "add", "lofi", "caption", "1-2")
    assert [s.caption for s in edited.dataset.samples] == ["lofi", "lofi", ""]
    assert message == "Added 'lofi' in 2 of 2 sample(s)."
    edited, message = edit_tags(edited, "add", "LoFi", "caption and genre", "")
    assert [s.caption for s in edited.dataset.samples] == ["lofi", "lofi", "LoFi"]
    assert [s.genre for s in edited.dataset.samples] == ["LoFi", "LoFi", "LoFi"]
    assert message == "Added 'LoFi' in 3 of 3 sample(s)."
    edited, message = edit_tags(edited, "remove", "lofi", "genre", "2, 3")
    assert [s.genre for s in edited.dataset.samples] == ["LoFi", "", ""]
    assert [s.caption for s in edited.dataset.samples] == ["lofi", "lofi", "LoFi"]
    assert edited.unsaved and [s.caption for s in scanned.dataset.samples] == ["", "", ""]
    with pytest.raises(DatasetError, match="Type the tag"):
        edit_tags(scanned, "add", " , ")


def test_selecting_a_sample_gives_its_audio_and_values(workspace, scanned, tmp_path, real_loops):
    edited = apply_sample_edit(scanned, 2, "breakbeat", "funk", "", 136, "", "4", "unknown", True)
    audio, note, values = sample_view(workspace, edited, 2)
    assert audio == str(workspace.audio / "loops" / "loop_amen_full.flac")
    assert note == "Sample 3: `loop_amen_full.flac`"
    assert values == ("breakbeat", "funk", "", 136.0, "", "4", "unknown", True, "caption")

    # A sample outside the workspace roots is not served to the browser.
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(real_loops["drum_roll"], outside / "far.flac")
    elsewhere = OpenDataset(Dataset("far", [Sample(str(outside / "far.flac"))], root=workspace.datasets))
    audio, note, _ = sample_view(workspace, elsewhere, 0)
    assert audio is None and "cannot play it" in note and "outside the folders" in note


def test_report_and_settings_on_the_open_dataset(scanned):
    text = report_markdown(scanned, analyse_audio=False)
    assert "Dataset 'loops': 3 samples" in text
    assert "44100 Hz × 3" in text and "mono × 2" in text and "stereo × 1" in text
    assert "Levels, clipping, silence and duplicates: not analysed" in text

    tagged = edit_tags(scanned, "add", "drums", "genre", "1, 3")[0]
    changed = apply_settings(tagged, "beats", "  newtag ", "replace", 1.0)
    assert (changed.dataset.name, changed.dataset.trigger_tag, changed.dataset.tag_position) == ("beats", "newtag",
                                                                                                 "replace")
    assert [s.prompt_source for s in changed.dataset.samples] == ["genre", "caption", "genre"]
    with pytest.raises(DatasetError, match="tag position must be one of"):
        apply_settings(scanned, "", "", "middle", 0.0)


def test_the_tab_builds_with_its_components(workspace, scanned):
    ctx = AppContext.create(workspace)
    with gr.Blocks() as app:
        build_dataset_tab(ctx)
    ids = {block.elem_id for block in app.blocks.values() if getattr(block, "elem_id", None)}
    assert {"dataset-folder", "dataset-scan", "dataset-table", "dataset-caption", "dataset-audio", "dataset-apply",
            "dataset-tag-apply", "dataset-report", "dataset-save", "dataset-path", "dataset-choice",
            "dataset-scan-into", "dataset-drop-missing", "dataset-remove", "dataset-prompt-source"} <= ids
    # The scan and report handlers still ask Gradio for a progress bar through the error wrapper.
    from gradio.helpers import special_args

    progress_handlers = [fn.name for fn in app.fns.values() if special_args(fn.fn)[1] is not None]
    assert sorted(progress_handlers) == ["do_report", "do_scan", "do_scan_into"]
    # Clicking the third row of the table fills the player and the editor.
    select = next(fn for fn in app.fns.values() if fn.name == "do_select")
    click = gr.SelectData(None, {"index": [2, 1], "value": "loop_amen_full.flac"})
    args, _, event_index, _ = special_args(select.fn, [scanned], event_data=click)
    assert event_index == 0
    index, audio, note, *_ = select.fn(*args)
    assert (index, audio, note) == (2, str(workspace.audio / "loops" / "loop_amen_full.flac"),
                                    "Sample 3: `loop_amen_full.flac`")

    # Remove, through the handler the button calls: the row goes, the editor's sample is cleared.
    remove = next(fn for fn in app.fns.values() if fn.name == "do_remove")
    after, rows, _, text, selected, audio, note = remove.fn(scanned, 1)
    assert [row[1] for row in rows] == ["drum_roll.flac", "loop_amen_full.flac"] and after.unsaved
    assert text == "Removed sample 2 (`guit_e_slide.flac`); not saved yet." and (selected, audio) == (None, None)
    with pytest.warns(UserWarning, match="Pick a sample in the table first"):  # a toast, outputs left
        assert remove.fn(scanned, None) == gr.skip()


def handler(app, name: str):
    """The function an event of the built tab runs, by its handler's name."""
    return next(fn.fn for fn in app.fns.values() if fn.name == name)


def listener(app, elem_id: str, event: str):
    """The function the `event` of the component `elem_id` runs."""
    block = next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == elem_id)
    return next(fn.fn for fn in app.fns.values() if (block._id, event) in fn.targets)


def test_a_refused_action_is_a_warning_that_leaves_the_table_and_the_edits(workspace, scanned):
    # gr.Error would lay Gradio's error box over every output, the table included (blank, unclickable)
    ctx = AppContext.create(workspace)
    with gr.Blocks() as app:
        build_dataset_tab(ctx)
    edited = edit_caption(scanned, 0, "an unsaved edit")
    (workspace.datasets / "taken.json").write_text("{}")
    refusals = [
        ("do_apply", (edited, None, *["x"] * 9), "Pick a sample in the table first"),
        ("do_remove", (edited, None), "Pick a sample in the table first"),
        ("do_save", (edited, "datasets/taken.json", False, None), "already exists: tick Overwrite"),
        ("do_tags", (edited, "add", "caption", "lofi", "9"), "'9' is outside 1-3"),
        ("do_settings", (None, "x", "", "prepend", 0.0), "No dataset open"),
        ("do_load", ("datasets/missing.json",), "missing.json"),
    ]
    for name, args, message in refusals:
        with pytest.warns(UserWarning, match=message):
            assert handler(app, name)(*args) == gr.skip(), name  # one skip(): every output left as it was
    assert (workspace.datasets / "taken.json").read_text() == "{}"

    def broken():
        raise KeyError("a bug")

    with pytest.raises(KeyError, match="a bug"):  # a bug is no refusal: Gradio shows it as an error
        warn_refusals(broken)()


def test_a_list_read_again_while_open_keeps_the_chosen_item_in_its_place():
    # Gradio keeps the tick (and what Enter picks) at the chosen item's place while the list is open,
    # whatever value comes with the update: the chosen item must not move.
    assert reopened_choices(["demo"], ["copy-b", "demo"], "demo") == ["demo", "copy-b"]  # new ones at the end
    assert reopened_choices(["a", "b"], ["a", "b"], "b") is None  # nothing to send
    assert reopened_choices(["a", "b", "c"], ["a", "b"], "b") == ["a", "b"]  # gone after the chosen one: dropped
    assert reopened_choices(["a", "b", "c"], ["b", "c", "d"], "b") == ["a", "b", "c", "d"]  # before it: kept
    assert reopened_choices(["a", "b"], ["a"], "b") is None  # the chosen one stays, even when gone
    for nothing_chosen in (None, "typed/by/hand.json"):  # no tick to keep: only the gone ones go
        assert reopened_choices(["a", "c"], ["b", "c"], nothing_chosen) == ["c", "b"]


def test_the_datasets_list_read_again_keeps_the_chosen_dataset(workspace, scanned):
    ctx = AppContext.create(workspace)
    (workspace.datasets / "demo.json").write_text("{}")
    with gr.Blocks() as app:
        build_dataset_tab(ctx)
    (workspace.datasets / "copy-b.json").write_text("{}")  # saved after the page loaded
    opened = listener(app, "dataset-choice", "focus")
    update, shown = opened("datasets/demo.json", ["datasets/demo.json"])  # the page's list, as built
    assert update == gr.update(choices=["datasets/demo.json", "datasets/copy-b.json"])
    assert shown == update["choices"]  # the page's state follows
    assert opened("datasets/demo.json", shown) == gr.skip()  # unchanged: nothing sent
    # Refresh (the list is closed then): sorted, the chosen one kept, the state too
    assert listener(app, "dataset-refresh", "click")("datasets/demo.json") == (
        gr.update(choices=["datasets/copy-b.json", "datasets/demo.json"], value="datasets/demo.json"),
        ["datasets/copy-b.json", "datasets/demo.json"])
    # Save chooses the file saved; one outside datasets/ is not listed, so the choice so far stays
    *_, listed, shown, where = handler(app, "do_save")(scanned, "datasets/new.json", False, "datasets/demo.json")
    assert listed["value"] == where == "datasets/new.json" and shown == listed["choices"] == [
        "datasets/copy-b.json", "datasets/demo.json", "datasets/new.json"]
    *_, listed, shown, where = handler(app, "do_save")(scanned, "audio/loops/here.json", False, "datasets/demo.json")
    assert (listed["value"], where) == ("datasets/demo.json", "audio/loops/here.json")


def test_every_json_under_datasets_is_listed_whatever_its_case_and_sub_folder(workspace, scanned):
    for target in ("datasets/b.JSON", "datasets/sub/a.json", "datasets/A.json"):
        save_open_dataset(workspace, scanned, target)  # Save takes each of them
    (workspace.datasets / ".hidden").mkdir()
    (workspace.datasets / ".hidden" / "x.json").write_text("{}")  # e.g. a tool's cache: left out
    (workspace.datasets / "notes.txt").write_text("")
    (workspace.datasets / "folder.json").mkdir()  # a folder, not a dataset
    assert dataset_choices(workspace) == ["datasets/A.json", "datasets/b.JSON", "datasets/sub/a.json"]
    assert dataset_files(workspace) == [workspace.datasets / "A.json", workspace.datasets / "b.JSON",
                                        workspace.datasets / "sub" / "a.json"]
    assert dataset_files(Workspace(workspace.root / "elsewhere", workspace.checkpoints)) == []  # no datasets/


def test_remove_a_sample_is_saved_only_with_the_dataset(workspace, scanned):
    saved, _ = save_open_dataset(workspace, scanned, "datasets/loops.json")
    removed = remove_sample(saved, 0)
    assert [s.audio for s in removed.dataset.samples] == [f"{name}.flac" for name in LOOPS[1:]]
    assert removed.unsaved and (removed.path, removed.revision) == (saved.path, saved.revision)
    assert len(saved.dataset.samples) == 3  # the state it came from is untouched
    assert len(json.loads((workspace.datasets / "loops.json").read_text())["samples"]) == 3  # not saved yet
    assert (workspace.audio / "loops" / "drum_roll.flac").is_file()  # the audio file stays
    save_open_dataset(workspace, removed, "datasets/loops.json")
    samples = json.loads((workspace.datasets / "loops.json").read_text())["samples"]
    assert [s["audio"].rsplit("/", 1)[1] for s in samples] == ["guit_e_slide.flac", "loop_amen_full.flac"]
    with pytest.raises(DatasetError, match="Pick a sample"):
        remove_sample(removed, 2)
    with pytest.raises(DatasetError, match="No dataset open"):
        remove_sample(None, 0)


def test_the_prompt_source_of_one_sample_is_edited(scanned):
    s = scanned.dataset.samples[0]
    args = (s.caption, "breaks", s.lyrics, s.bpm, s.keyscale, s.timesignature, s.language, s.instrumental)
    edited = apply_sample_edit(scanned, 0, *args, "genre")
    assert [x.prompt_source for x in edited.dataset.samples] == ["genre", "caption", "caption"]
    assert apply_sample_edit(edited, 0, *args).dataset.samples[0].prompt_source == "genre"  # None keeps it
    assert apply_sample_edit(edited, 0, *args, "caption").dataset.samples[0].prompt_source == "caption"
    with pytest.raises(DatasetError, match=r"sample 1 \(drum_roll.flac\): prompt source must be one of caption, genre, "
                                           "found 'lyrics'"):
        apply_sample_edit(scanned, 0, *args, "lyrics")


def test_scan_new_songs_into_the_opened_dataset_keeps_its_edits_and_saves_with_the_revision_check(
        workspace, scanned, real_loops):
    save_open_dataset(workspace, edit_caption(scanned, 1, "slide guitar, reviewed"), "datasets/loops.json")
    opened = edit_caption(open_dataset(workspace, "datasets/loops.json"), 0, "an unsaved edit")
    shutil.copy(real_loops["loop_tabla"], workspace.audio / "loops" / "loop_tabla.flac")
    (workspace.audio / "loops" / "loop_tabla.json").write_text(json.dumps({"caption": "tabla groove"}))
    (workspace.audio / "loops" / "drum_roll.flac").unlink()

    updated, text = scan_into_open(workspace, opened, "audio/loops")
    assert [s.caption for s in updated.dataset.samples] == ["an unsaved edit", "slide guitar, reviewed", "",
                                                            "tabla groove"]
    assert text.startswith("Scanned `audio/loops` into **loops**: 2 kept, 1 added, 1 missing (left in the dataset). "
                           "Not saved yet.")
    assert "(tick Drop to remove them) (1):**\n- `" in text and text.endswith("drum_roll.flac`")
    assert updated.dataset.trigger_tag == "mystyle" and updated.unsaved
    assert (updated.path, updated.revision) == (opened.path, opened.revision)  # Save goes back with its check

    dropped, text = scan_into_open(workspace, opened, "audio/loops", drop_missing=True)
    assert [s.caption for s in dropped.dataset.samples] == ["slide guitar, reviewed", "", "tabla groove"]
    assert "1 missing (removed from the dataset)" in text and "**Removed (1):**" in text

    # someone else saves the file meanwhile: the update is refused and their save stays
    other = open_dataset(workspace, "datasets/loops.json")
    save_open_dataset(workspace, edit_caption(other, 2, "their amen"), "datasets/loops.json")
    with pytest.raises(DatasetError, match="changed by someone else since you loaded it"):
        save_open_dataset(workspace, dropped, "datasets/loops.json")
    assert open_dataset(workspace, "datasets/loops.json").dataset.samples[2].caption == "their amen"

    reloaded = open_dataset(workspace, "datasets/loops.json")
    saved, _ = save_open_dataset(workspace, scan_into_open(workspace, reloaded, "audio/loops")[0],
                                 "datasets/loops.json")
    assert [s.caption for s in open_dataset(workspace, "datasets/loops.json").dataset.samples] == [
        "", "slide guitar, reviewed", "their amen", "tabla groove"]
    assert not saved.unsaved

    with pytest.raises(DatasetError, match="No dataset open"):
        scan_into_open(workspace, None, "audio/loops")


def test_loading_a_dataset_points_the_audio_folder_at_its_songs(workspace, scanned, tmp_path, real_loops):
    save_open_dataset(workspace, scanned, "datasets/loops.json")
    (workspace.audio / "loops" / "more").mkdir()
    shutil.copy(real_loops["loop_tabla"], workspace.audio / "loops" / "more" / "tabla.flac")
    ctx = AppContext.create(workspace)
    with gr.Blocks() as app:
        build_dataset_tab(ctx)
    load = next(fn for fn in app.fns.values() if fn.name == "do_load")
    *_, folder = load.fn("datasets/loops.json")
    assert folder == "audio/loops"  # where a scan into it should look, not the whole audio folder
    updated, _ = scan_into_open(workspace, open_dataset(workspace, "datasets/loops.json"), folder)
    assert [s.audio.rsplit("/", 2)[-2:] for s in updated.dataset.samples[3:]] == [["more", "tabla.flac"]]
    assert songs_folder(workspace, OpenDataset(Dataset("empty", []))) == ""
    far = tmp_path / "far" / "song.flac"
    assert songs_folder(workspace, OpenDataset(Dataset("far", [Sample(far.as_posix())]))) == str(far.parent)
