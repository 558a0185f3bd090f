"""The Dataset tab: scan a folder of audio into a dataset or load a dataset JSON, scan a folder's new
songs into the open dataset, look through and edit its samples (one at a time, or a tag across
many), remove samples, check it with the dataset report, save it.

The open dataset lives in the browser's `gr.State` as an `OpenDataset`. What the tab does to it is
plain functions in `acestep.ui.dataset_edits`, which tests call without a browser;
`build_dataset_tab` only wires them to Gradio. A refused action is a warning that leaves the page
as it was (`warn_refusals`). The list of datasets is read again when opened (`read_when_opened`).
Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from acestep.dataset import LANGUAGE_NAMES, PROMPT_SOURCES, TAG_POSITIONS
from acestep.dataset.tags import TAG_ACTIONS, TAG_FIELDS
from acestep.ui.context import AppContext
from acestep.ui.dropdowns import read_when_opened, relisted
from acestep.ui.jobs_panel import warn_refusals
from acestep.ui.dataset_edits import (
    OpenDataset,
    Progress,
    require_open,
    sample_at,
    apply_sample_edit,
    apply_settings,
    dataset_choices,
    default_save_path,
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

HEADERS = ["#", "Audio", "Caption", "Genre", "Lyrics", "BPM", "Key", "Time", "Language", "Instr.", "Seconds",
           "Prompt"]
# Shares of the table's width: without them the long captions take it all and the short columns'
# headers wrap one letter per line.
COLUMN_WIDTHS = ["3%", "13%", "23%", "10%", "7%", "5%", "7%", "5%", "7%", "6%", "7%", "7%"]
LANGUAGE_CHOICES = [(f"{name} ({code})", code) for code, name in LANGUAGE_NAMES.items()]
PICK_A_SAMPLE = "Pick a sample in the table to hear and edit it."


# --- the tab ---------------------------------------------------------------------------------




def _progress_callback(progress: gr.Progress, verb: str) -> Progress:
    return lambda done, total, path: progress((done, total), desc=f"{verb} {Path(path).name}")


def build_dataset_tab(ctx: AppContext) -> None:
    """Add the Dataset tab's components to the current Blocks context."""
    ws = ctx.workspace
    opened_state = gr.State(None)
    selected_state = gr.State(None)
    with gr.Accordion("Open a dataset", open=True):
        with gr.Row():
            with gr.Column():
                folder = gr.Textbox(label="Audio folder", value=ctx.defaults.get("audio", "audio"),
                                    elem_id="dataset-folder")
                with gr.Row():
                    name = gr.Textbox(label="Name (default: the folder's)", elem_id="dataset-name")
                    trigger = gr.Textbox(label="Trigger tag", elem_id="dataset-trigger")
                    position = gr.Dropdown(list(TAG_POSITIONS), value="prepend", label="Tag position",
                                           elem_id="dataset-tag-position")
                with gr.Row():
                    ratio = gr.Slider(0, 1, value=0, step=0.05, label="Genre ratio", elem_id="dataset-genre-ratio")
                    instrumental_all = gr.Checkbox(label="All instrumental", elem_id="dataset-all-instrumental")
                    language = gr.Dropdown([("From the labels, else unknown", ""), *LANGUAGE_CHOICES], value="",
                                           label="Language", elem_id="dataset-language")
                with gr.Row():
                    scan = gr.Button("Scan folder", variant="primary", elem_id="dataset-scan")
                    settings = gr.Button("Apply name/tag/ratio to the open dataset", elem_id="dataset-settings")
                with gr.Row():
                    # keeps every sample of the open dataset (and its edits); adds the folder's new songs
                    scan_into = gr.Button("Scan new songs into the open dataset", elem_id="dataset-scan-into")
                    drop_missing = gr.Checkbox(label="Drop samples whose audio is gone", elem_id="dataset-drop-missing")
            with gr.Column():
                choice = gr.Dropdown(dataset_choices(ws), label="Datasets in the workspace", elem_id="dataset-choice")
                path = gr.Textbox(label="Dataset JSON", value=ctx.defaults.get("dataset", ""), elem_id="dataset-path")
                with gr.Row():
                    load = gr.Button("Load / reload", elem_id="dataset-load")
                    refresh = gr.Button("Refresh list", elem_id="dataset-refresh")
    status = gr.Markdown(status_text(ws, None), elem_id="dataset-status")
    message = gr.Markdown(elem_id="dataset-message")
    table = gr.Dataframe(headers=HEADERS, interactive=False, wrap=True, column_widths=COLUMN_WIDTHS,
                         elem_id="dataset-table")
    with gr.Row():
        with gr.Column():
            note = gr.Markdown(PICK_A_SAMPLE, elem_id="dataset-sample")
            audio = gr.Audio(type="filepath", interactive=False, label="Audio", elem_id="dataset-audio")
            caption = gr.Textbox(label="Caption", lines=2, elem_id="dataset-caption")
            genre = gr.Textbox(label="Genre", elem_id="dataset-genre")
            with gr.Row():
                bpm = gr.Number(label="BPM", elem_id="dataset-bpm")
                key = gr.Textbox(label="Key", elem_id="dataset-key")
                timesig = gr.Textbox(label="Time signature", elem_id="dataset-timesignature")
                sample_language = gr.Dropdown(LANGUAGE_CHOICES, value="unknown", label="Language",
                                              elem_id="dataset-sample-language")
                sample_instrumental = gr.Checkbox(label="Instrumental", elem_id="dataset-sample-instrumental")
            lyrics = gr.Textbox(label="Lyrics", lines=6, elem_id="dataset-lyrics")
            prompt_source = gr.Radio(list(PROMPT_SOURCES), value="caption", label="Train with its",
                                     elem_id="dataset-prompt-source")
            with gr.Row():
                apply = gr.Button("Apply", variant="primary", elem_id="dataset-apply")
                remove = gr.Button("Remove this sample", variant="stop", elem_id="dataset-remove")
        with gr.Column():
            gr.Markdown("### Tags in many samples")
            with gr.Row():
                tag_action = gr.Radio(list(TAG_ACTIONS), value="add", label="Action", elem_id="dataset-tag-action")
                tag_field = gr.Radio(list(TAG_FIELDS), value="caption", label="In", elem_id="dataset-tag-field")
            tag_text = gr.Textbox(label="Tag", elem_id="dataset-tag-text")
            tag_samples = gr.Textbox(label="Samples (e.g. 1-3, 7; empty: all)", elem_id="dataset-tag-samples")
            tag_apply = gr.Button("Edit tags", elem_id="dataset-tag-apply")
            gr.Markdown("### Save")
            save_path = gr.Textbox(label="Save as", elem_id="dataset-save-path")
            overwrite = gr.Checkbox(label="Overwrite another existing file", elem_id="dataset-overwrite")
            save = gr.Button("Save", variant="primary", elem_id="dataset-save")
    with gr.Accordion("Dataset report", open=False):
        analyse = gr.Checkbox(value=True, label="Analyse audio (levels, clipping, silence, duplicates; slower)",
                              elem_id="dataset-report-analyse")
        report_button = gr.Button("Check the dataset", elem_id="dataset-report")
        report = gr.Markdown(elem_id="dataset-report-text")

    editor = [caption, genre, lyrics, bpm, key, timesig, sample_language, sample_instrumental, prompt_source]
    shown = [opened_state, table, status, message]

    def show(opened: OpenDataset, text: str = ""):
        return opened, sample_rows(opened.dataset), status_text(ws, opened), text

    def do_scan(folder, name, trigger, position, ratio, instrumental_all, language,
                progress=gr.Progress()):  # noqa: B008 (how Gradio asks for a progress bar)
        opened, text = scan_folder(ws, folder, name, trigger, position, ratio, instrumental_all, language,
                                   _progress_callback(progress, "Reading"))
        return (*show(opened, text), None, default_save_path(ws, opened))

    def do_scan_into(opened, folder, instrumental_all, language, drop_missing,
                     progress=gr.Progress()):  # noqa: B008
        updated, text = scan_into_open(ws, opened, folder, instrumental_all, language, drop_missing,
                                       _progress_callback(progress, "Reading"))
        return (*show(updated, text), None, default_save_path(ws, updated))

    def do_load(path):
        opened = open_dataset(ws, path)
        d = opened.dataset
        return (*show(opened, f"Loaded `{ws.relative(opened.path)}`."), None, default_save_path(ws, opened),
                d.name, d.trigger_tag, d.tag_position, d.genre_ratio, songs_folder(ws, opened) or gr.update())

    def do_select(evt: gr.SelectData, opened):
        index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        audio_path, text, values = sample_view(ws, opened, index)
        return (index, audio_path, text, *values)

    def do_apply(opened, index, *values):
        return show(apply_sample_edit(opened, index, *values), f"Sample {int(index) + 1} updated (not saved yet).")

    def do_remove(opened, index):
        gone = sample_at(opened, index).audio
        text = f"Removed sample {int(index) + 1} (`{gone}`); not saved yet."
        return (*show(remove_sample(opened, index), text), None, None, PICK_A_SAMPLE)

    def do_tags(opened, action, field, tag, samples):
        return show(*edit_tags(require_open(opened), action, tag, field, samples))

    def do_settings(opened, name, trigger, position, ratio):
        return show(apply_settings(require_open(opened), name, trigger, position, ratio), "Settings applied.")

    def do_save(opened, target, overwrite, chosen):
        saved, text = save_open_dataset(ws, require_open(opened), target, overwrite)
        where, choices = ws.relative(saved.path), dataset_choices(ws)
        # the file saved is chosen when listed (under datasets/); else the choice so far stays
        return (*show(saved, text), *relisted(choices, where if where in choices else chosen), where)

    def do_report(opened, analyse, progress=gr.Progress()):  # noqa: B008
        return report_markdown(require_open(opened), analyse, _progress_callback(progress, "Checking"))

    scan.click(warn_refusals(do_scan), inputs=[folder, name, trigger, position, ratio, instrumental_all, language],
               outputs=[*shown, selected_state, save_path])
    scan_into.click(warn_refusals(do_scan_into),
                    inputs=[opened_state, folder, instrumental_all, language, drop_missing],
                    outputs=[*shown, selected_state, save_path])
    load.click(warn_refusals(do_load), inputs=[path],
               outputs=[*shown, selected_state, save_path, name, trigger, position, ratio, folder])
    choice.change(lambda chosen: chosen or gr.update(), inputs=[choice], outputs=[path])
    # read again when opened and on Refresh (a dataset saved by another browser)
    listed = read_when_opened(choice, lambda: dataset_choices(ws))
    refresh.click(lambda current: relisted(dataset_choices(ws), current), inputs=[choice], outputs=[choice, listed])
    table.select(warn_refusals(do_select), inputs=[opened_state], outputs=[selected_state, audio, note, *editor])
    apply.click(warn_refusals(do_apply), inputs=[opened_state, selected_state, *editor], outputs=shown)
    remove.click(warn_refusals(do_remove), inputs=[opened_state, selected_state],
                 outputs=[*shown, selected_state, audio, note])
    tag_apply.click(warn_refusals(do_tags), inputs=[opened_state, tag_action, tag_field, tag_text, tag_samples],
                    outputs=shown)
    settings.click(warn_refusals(do_settings), inputs=[opened_state, name, trigger, position, ratio], outputs=shown)
    save.click(warn_refusals(do_save), inputs=[opened_state, save_path, overwrite, choice],
               outputs=[*shown, choice, listed, path])
    report_button.click(warn_refusals(do_report), inputs=[opened_state, analyse], outputs=[report])
