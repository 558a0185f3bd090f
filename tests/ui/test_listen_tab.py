"""The Listen tab: the caption it starts from, the `preview` command line it submits and what it
refuses, the renders it lists and shows, and a real render job of a tiny trained run."""

import json
import sys
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import soundfile as sf

from acestep.cli import build_parser
from acestep.errors import AceStepError
from acestep.training.run_folders import RunFolderError
from acestep.ui.context import AppContext, Workspace
from acestep.ui.jobs_panel import markdown_text
from acestep.ui.listen_tab import (
    LISTEN_KIND,
    ListenForm,
    ListenRefused,
    build_listen_tab,
    default_prompt,
    job_summary,
    listen_args,
    render_description,
    render_files,
    render_folders,
    render_view,
    start_listen,
    tick_updates,
)

from .conftest import write_run


@pytest.fixture
def ctx(tmp_path):
    context = AppContext.create(Workspace(tmp_path / "ws", checkpoints=tmp_path / "checkpoints"))
    write_run(context.workspace.runs, "song")
    return context


def test_the_form_becomes_the_preview_command_line(ctx):
    form = ListenForm("song", "best", " mystyle, warm jazz piano ", lyrics="la la la", language="fr", duration=12,
                      seed=7, strengths="0, 0.5,1", bpm=96, key="C major", time_signature="3", steps=16, shift=2.5,
                      guidance_scale=4, guidance="cfg", device="cpu")
    assert listen_args(ctx, form) == [
        "preview", "--adapter", str(ctx.workspace.runs / "song" / "best"), "--caption=mystyle, warm jazz piano",
        "--strengths", "0,0.5,1", "--duration", "12", "--seed", "7", "--lyrics=la la la", "--language=fr",
        "--bpm=96", "--key=C major", "--time-signature=3", "--steps=16", "--shift=2.5", "--guidance-scale=4",
        "--guidance=cfg", "--device=cpu", "--checkpoints-dir", str(ctx.workspace.checkpoints)]
    step = listen_args(ctx, ListenForm("song", "checkpoints/step-000020", "mystyle", steps=None, bpm=None))
    assert not any(part.startswith(("--bpm", "--steps", "--shift", "--guidance", "--device", "--lyrics"))
                   for part in step)


@pytest.mark.parametrize(("settings", "parsed"), [
    ({"shift": 2, "guidance_scale": 0, "guidance": "cfg"}, (2.0, 0.0, "cfg")),
    ({"shift": 0.5, "guidance_scale": 7.5, "guidance": "apg"}, (0.5, 7.5, "apg")),
    ({"shift": None, "guidance_scale": None, "guidance": "apg"}, (None, None, "apg")),  # the variant's defaults
    ({"shift": "", "guidance_scale": " ", "guidance": None}, (None, None, "apg")),  # empty inputs: the same
])
def test_the_sampling_settings_reach_the_preview_command_as_it_reads_them(ctx, settings, parsed):
    args = listen_args(ctx, ListenForm("song", "final", "mystyle", **settings))
    cli = build_parser().parse_args([*args, "--out", "render"])
    assert (cli.shift, cli.guidance_scale, cli.guidance) == parsed
    if settings["guidance"] != "cfg":
        assert not any(part.startswith("--guidance=") for part in args)  # apg is the command's own default


def test_renders_measure_their_distance_to_the_songs_the_run_trained_on_while_they_are_there(ctx):
    tensors = ctx.workspace.tensors / "songs"
    config = ctx.workspace.runs / "song" / "config.toml"
    config.write_text(config.read_text() + f'[data]\ntensors_dir = "{tensors}"\n')
    form = ListenForm("song", "final", "mystyle")
    assert not any(part.startswith("--songs") for part in listen_args(ctx, form))  # not preprocessed (any more)
    tensors.mkdir()
    (tensors / "manifest.json").write_text("{}")
    args = listen_args(ctx, form)
    assert args[-3:] == [f"--songs={tensors}", "--checkpoints-dir", str(ctx.workspace.checkpoints)]
    assert build_parser().parse_args([*args, "--out", "render"]).songs == tensors


def test_each_render_gets_a_folder_of_its_own_even_two_at_once(ctx):
    jobs = [start_listen(ctx, ListenForm("song", "best", "mystyle", device="cpu")) for _ in range(2)]
    outs = [Path(job.argv[job.argv.index("--out") + 1]) for job in jobs]
    listen = ctx.workspace.outputs / "listen"
    assert outs == [listen / "song-best", listen / "song-best-2"] and all(out.is_dir() for out in outs)
    for job in jobs:
        ctx.jobs.stop(job.id, timeout=30)
    assert render_folders(ctx) == []  # folders without a render are not listed


def test_the_command_line_reads_back_as_the_form_said_even_text_that_starts_with_a_dash(ctx):
    form = ListenForm("song", "final", "-dark, techno", lyrics="--verse--\nla la", key="-", duration=5, seed=2,
                      strengths="0.5,1")
    args = build_parser().parse_args([*listen_args(ctx, form), "--out", "render"])
    assert (args.caption, args.lyrics, args.key, args.duration, args.seed, args.strengths) == (
        "-dark, techno", "--verse--\nla la", "-", 5.0, 2, [0.5, 1.0])
    assert args.adapter == ctx.workspace.runs / "song" / "final" and args.func.__name__ == "run_preview"


def test_a_run_trained_on_an_nf4_base_renders_on_one_by_default(ctx):
    from acestep.ui.listen_tab import default_quantization

    assert default_quantization(ctx, "song") == "none" and default_quantization(ctx, None) == "none"
    metadata = ctx.workspace.runs / "song" / "final" / "training_metadata.json"
    metadata.write_text(json.dumps({**json.loads(metadata.read_text()), "base_quantization": "nf4"}))
    assert default_quantization(ctx, "song", "final") == "nf4"
    args = listen_args(ctx, ListenForm("song", "final", "mystyle", quantization="nf4"))
    assert "--quantization=nf4" in args
    assert build_parser().parse_args([*args, "--out", "render"]).quantization == "nf4"
    assert not any(a.startswith("--quantization") for a in listen_args(ctx, ListenForm("song", "final", "mystyle")))


@pytest.mark.parametrize(("changes", "message"), [
    ({"caption": "  "}, "Write a caption"),
    ({"strengths": "1,1"}, "distinct numbers"),
    ({"strengths": "loud"}, "numbers separated by commas"),
    ({"strengths": "0,0.5,1,1.5,2"}, "at most 4 of them"),
    ({"strengths": "0,3"}, "each from 0 to 2"),
    ({"duration": 0}, "Seconds must be more than 0 and at most 600"),
    ({"duration": 601}, "Seconds must be more than 0 and at most 600"),
    ({"duration": "long"}, "Seconds must be a number"),
    ({"seed": -1}, "Seed must be a whole number at least 0"),
    ({"seed": 1.5}, "Seed must be a whole number"),
    ({"steps": 0}, "Sampling steps must be a whole number at least 1"),
    ({"shift": 0}, "Timestep shift must be more than 0"),
    ({"shift": "fast"}, "Timestep shift must be a number"),
    ({"guidance_scale": -1}, "Guidance scale must be at least 0"),
    ({"guidance": "pag"}, "Guidance method: one of apg, cfg, found 'pag'"),
    ({"bpm": -90}, "BPM must be more than 0"),
    ({"checkpoint": ""}, "Pick a run and one of its adapters"),
    ({"quantization": "int4"}, "DiT weights: one of none, nf4, found 'int4'"),
])
def test_what_the_form_refuses(ctx, changes, message):
    values = {"run": "song", "checkpoint": "final", "caption": "mystyle", **changes}
    with pytest.raises(ListenRefused, match=message):
        listen_args(ctx, ListenForm(**values))


def test_an_adapter_or_device_that_is_not_there_is_refused(ctx):
    with pytest.raises(RunFolderError, match="no complete adapter 'checkpoints/step-000025'"):
        listen_args(ctx, ListenForm("song", "checkpoints/step-000025", "mystyle"))  # still being written
    with pytest.raises(AceStepError, match="Device 'gpu'"):
        listen_args(ctx, ListenForm("song", "final", "mystyle", device="gpu"))


def test_it_is_a_gpu_job_unless_the_device_is_cpu(ctx):
    on_gpu = start_listen(ctx, ListenForm("song", "final", "mystyle"), owner="ann")
    on_cpu = start_listen(ctx, ListenForm("song", "final", "mystyle", device="cpu"))
    assert on_gpu.kind == on_cpu.kind == LISTEN_KIND and on_gpu.label == "song/final" and on_gpu.owner == "ann"
    assert on_gpu.needs_gpu and not on_cpu.needs_gpu
    for job in (on_gpu, on_cpu):
        ctx.jobs.stop(job.id, timeout=30)


def test_the_prompt_starts_from_the_runs_preview_settings_else_the_trigger_tag(ctx):
    assert default_prompt(ctx, "song") == ("mystyle", "", "en", None, "", "")  # training_metadata.json's trigger tag
    config = ctx.workspace.runs / "song" / "config.toml"
    config.write_text(config.read_text() + '[run]\npreview_caption = "mystyle, lofi"\npreview_lyrics = "oh"\n'
                      'preview_language = "de"\npreview_bpm = 92.0\npreview_key = "A minor"\n'
                      'preview_time_signature = "3"\n')
    assert default_prompt(ctx, "song") == ("mystyle, lofi", "oh", "de", 92.0, "A minor", "3")
    assert default_prompt(ctx, None) == ("", "", "en", None, "", "")


def write_render(folder: Path, strengths=("0", "1", "0.5"), record: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in strengths:
        (folder / f"strength-{name}.wav").write_bytes(b"RIFF")
        (folder / f"strength-{name}.png").write_bytes(b"PNG")
    if record is not None:
        (folder / "preview.json").write_text(json.dumps(record))
    return folder


def test_renders_are_listed_newest_first_and_shown_by_strength(ctx):
    import os

    listen = ctx.workspace.outputs / "listen"
    old = write_render(listen / "song-best", record={"caption": "mystyle, *jazz*", "lyrics": "la la\nla",
                                                     "duration": 20.0, "seed": 3, "steps": 8, "variant": "turbo",
                                                     "adapter": str(ctx.workspace.runs / "song" / "best"),
                                                     "effect_db": {"0.5": 0.8, "1": 2.345},
                                                     "songs_distance": {"0": 1.25, "0.5": 1.0, "1": 0.875}})
    os.utime(old, (1, 1))
    new = write_render(listen / "song-final", strengths=("1",))
    (listen / "empty").mkdir()
    assert render_folders(ctx) == ["outputs/listen/song-final", "outputs/listen/song-best"]
    files = render_files(old)
    assert [label for label, _, _ in files] == ["base model", "strength 0.5, 0.80 dB",
                                                "strength 1 (as trained), 2.35 dB"]
    assert [wav.name for _, wav, _ in files] == ["strength-0.wav", "strength-0.5.wav", "strength-1.wav"]
    assert render_description(ctx, old) == (
        r"**mystyle, \*jazz\*** · lyrics: la la... · 20 s · seed 3 · 8 steps · turbo model · adapter "
        "`runs/song/best`\n\nAdapter effect: strength 0.5: 0.80 dB, strength 1: 2.35 dB from the base model (the "
        "mean log-mel difference from the render at strength 0, same noise; 0 dB is the same sound)"
        "\n\nLatent distance to the songs the adapter trained on (lower is closer): strength 0: 1.250, strength 0.5: "
        "1.000, strength 1: 0.875 (30% closer at strength 1 than the base model)"
        "\n\nFiles in `outputs/listen/song-best`.")
    assert render_description(ctx, new) == "Files in `outputs/listen/song-final`."
    description, *slots = render_view(ctx, "outputs/listen/song-best")
    players, images = slots[:4], slots[4:]
    assert [p["visible"] for p in players] == [True, True, True, False]
    assert players[2]["label"] == files[2][0] and players[2]["value"].endswith("strength-1.wav")
    assert images[0]["value"].endswith("strength-0.png") and images[3]["visible"] is False
    assert render_view(ctx, None)[0] == "Pick a render to listen to."


def test_the_description_names_the_sampling_settings_and_guidance_only_where_it_was_used(ctx):
    listen = ctx.workspace.outputs / "listen"
    base = write_render(listen / "base", record={"caption": "mystyle", "duration": 5.0, "seed": 1, "steps": 50,
                                                 "shift": 1.0, "guidance_scale": 7.0, "guidance": "cfg",
                                                 "variant": "base"})
    turbo = write_render(listen / "turbo", record={"caption": "mystyle", "duration": 5.0, "seed": 1, "steps": 8,
                                                   "shift": 3.0, "guidance_scale": 1.0, "guidance": "apg",
                                                   "variant": "turbo"})
    assert render_description(ctx, base).startswith(
        "**mystyle** · instrumental · 5 s · seed 1 · 50 steps · shift 1 · guidance 7 (cfg) · base model")
    assert render_description(ctx, turbo).startswith(
        "**mystyle** · instrumental · 5 s · seed 1 · 8 steps · shift 3 · turbo model")  # no guidance on turbo


def test_the_timer_shows_the_newest_render_at_first_then_each_render_that_finishes(ctx):
    listen = ctx.workspace.outputs / "listen"
    status, announced, picked = tick_updates(ctx, "", None)  # the page's first tick, no render yet
    assert status.startswith("No render yet") and announced == "-" and picked.value is None
    write_render(listen / "song-best")
    status, announced, picked = tick_updates(ctx, "", None)
    assert announced == "-" and picked.value == "outputs/listen/song-best"
    assert not isinstance(tick_updates(ctx, "-", "outputs/listen/song-best")[2], gr.Dropdown)  # nothing new

    job = start_listen(ctx, ListenForm("song", "final", "mystyle", device="cpu"))  # fails: no model to render on
    job = ctx.jobs.wait(job.id, timeout=120)
    assert job.status == "failed"
    status, announced, picked = tick_updates(ctx, "-", "outputs/listen/song-best")
    assert "**failed**" in status and announced == "-" and not isinstance(picked, gr.Dropdown)

    out = Path(job.argv[job.argv.index("--out") + 1])
    write_render(out)  # as a render job that finished would have left it
    done = ctx.jobs.submit("preview", [sys.executable, "-c", "pass", "--out", str(out)], needs_gpu=False)
    assert ctx.jobs.wait(done.id, timeout=60).status == "done"
    status, announced, picked = tick_updates(ctx, "-", "outputs/listen/song-best")
    assert "done" in status and announced == done.id and picked.value == "outputs/listen/song-final"
    assert not isinstance(tick_updates(ctx, done.id, picked.value)[2], gr.Dropdown)  # shown once, then left


def test_tab_builds_with_its_element_ids(ctx):
    with gr.Blocks() as app:
        build_listen_tab(ctx)
    ids = {block.elem_id for block in app.blocks.values()}
    assert {"listen-run", "listen-checkpoint", "listen-caption", "listen-lyrics", "listen-strengths",
            "listen-render", "listen-renders", "listen-audio-0", "listen-image-3"} <= ids


@pytest.mark.slow
def test_a_render_job_of_a_trained_run_on_the_cpu(trained):
    ctx = trained
    caption, lyrics, language, *_ = default_prompt(ctx, "tiny")
    form = ListenForm("tiny", "final", caption + ", lofi", lyrics, language, duration=0.6, seed=5,
                      strengths="0, 1", shift=2, guidance_scale=1, guidance="cfg", device="cpu")
    job = ctx.jobs.wait(start_listen(ctx, form).id, timeout=300)
    assert job.status == "done", ctx.jobs.tail_log(job.id)
    assert render_folders(ctx) == ["outputs/listen/tiny-final"]
    folder = ctx.workspace.outputs / "listen" / "tiny-final"
    files = render_files(folder)
    effect = json.loads((folder / "preview.json").read_text())["effect_db"]["1"]
    assert [label for label, _, _ in files] == ["base model", f"strength 1 (as trained), {effect:.2f} dB"]
    audio = [sf.read(wav)[0] for _, wav, _ in files]
    assert audio[0].shape == audio[1].shape and audio[0].shape[1] == 2 and np.abs(audio[0] - audio[1]).max() > 0
    assert all(png is not None and png.stat().st_size > 0 for _, _, png in files)
    record = json.loads((folder / "preview.json").read_text())
    assert record["caption"] == "mystyle, lofi" and record["seed"] == 5 and record["strengths"] == [0.0, 1.0]
    assert (record["steps"], record["shift"], record["guidance_scale"], record["guidance"]) == (8, 2.0, 1.0, "none")
    assert record["songs"] == str(ctx.workspace.tensors / "songs") and list(record["songs_distance"]) == ["0", "1"]
    assert render_description(ctx, folder).startswith(
        "**mystyle, lofi** · instrumental · 0.6 s · seed 5 · 8 steps · shift 2 · turbo model")

    # the tiny model is a turbo one: a guidance scale is refused by the command's own check, in its words
    refused = start_listen(ctx, ListenForm("tiny", "final", "mystyle", duration=0.6, guidance_scale=7, device="cpu"))
    refused = ctx.jobs.wait(refused.id, timeout=300)
    message = ("turbo checkpoints are guidance-distilled and sample without CFG; guidance_scale 7.0 is not supported "
               "(leave it unset or 1)")
    assert refused.status == "failed" and message in refused.message, ctx.jobs.tail_log(refused.id)
    assert markdown_text(message) in job_summary(ctx, refused)  # what the tab's status line says
    assert render_folders(ctx) == ["outputs/listen/tiny-final"]  # nothing rendered


def test_the_longest_render_is_the_renderers_own_limit():
    from acestep.inference.preview import MAX_SECONDS as RENDERER_MAX_SECONDS
    from acestep.ui.listen_tab import MAX_SECONDS

    assert MAX_SECONDS == RENDERER_MAX_SECONDS  # the tab keeps a copy: the renderer's module imports torch
