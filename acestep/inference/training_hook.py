"""Previews during training (`run.preview_*`): every N steps and/or epochs, on the main process,
render the preview caption at each configured strength with the live adapter, write
`<run>/previews/step-NNNNNN/strength-S.wav` and `.png` and the folder's `preview.json` (what was
rendered, the adapter effect of each strength when 0 is among them, and each strength's latent
distance to the songs of data.tensors_dir: `acestep.inference.effect`), and emit a `preview` event whose
`files` lists the wav and PNG files (paths relative to the run folder), with the effects in
`effect_db` and the distances in `songs_distance`. The prompt's tempo, key and time signature and
the sampler's steps, shift and guidance come from `run.preview_*` too (unset: the model's defaults);
`check_preview_sampling` refuses, before the model loads, those the model's variant cannot render.

Training is unchanged by it, bit for bit: every RNG state (torch CPU and every CUDA device, numpy,
Python) is saved before and restored after, every module's train/eval mode is put back, the
adapter's flags and scales are restored exactly (`acestep.inference.strength`), sampling draws only
from its own generator, and neither the default dtype nor autocast is touched. The renderer (VAE,
and the encoders while a caption is encoded) is created at the first preview, on the training
device in the training dtype. A preview that fails (e.g. out of memory) is reported as a `warning`
event and training goes on; models that cannot be found stop the run at its start. With
`run.compile` the blocks run their eager code for previews (`acestep.training.compilation`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from acestep.dataset.values import normalize_keyscale, normalize_timesignature
from acestep.errors import AceStepError, ConfigError, PreviewError, TrainingError
from acestep.files import write_atomically
from acestep.inference.effect import (LatentProfile, adapter_effects, distance_summary, effect_summary, songs_distances,
                                      songs_profile)
from acestep.inference.preview import PreviewRenderer, PreviewRequest, sampling_settings
from acestep.inference.render import RECORD_NAME, strength_label, strength_name, write_preview
from acestep.training.compilation import eagerly
from acestep.training.config_schema import RunConfig
from acestep.training.run_layout import PREVIEWS_FOLDER
from acestep.training.state import restore_rng, rng_states


def preview_request(run: RunConfig) -> PreviewRequest:
    """What the previews of a run render (`run.preview_*`); key and time signature in the dataset's
    form ("Am" -> "A minor", "4/4" -> "4"), as the prompts the adapter trains on write them."""
    return PreviewRequest(caption=run.preview_caption, lyrics=run.preview_lyrics, language=run.preview_language,
                          bpm=run.preview_bpm, keyscale=normalize_keyscale(run.preview_key),
                          timesignature=normalize_timesignature(run.preview_time_signature),
                          duration=run.preview_seconds, seed=run.preview_seed, steps=run.preview_steps,
                          shift=run.preview_shift, guidance_scale=run.preview_guidance_scale,
                          guidance=run.preview_guidance)


def check_preview_sampling(run: RunConfig, variant: str) -> None:
    """Refuse previews' sampling settings that a model of `variant` ("turbo", "xl-base", ...: the one
    the tensors were preprocessed with) cannot render: a turbo model samples 8 steps with shift 1, 2
    or 3 and no guidance. Called when a run starts, before its model loads, so that a wrong setting
    does not fail every preview of a night's training; with previews off or the variant unknown
    ("") there is nothing to check. Raises ConfigError naming the options and the fix."""
    if not (run.preview_every_steps or run.preview_every_epochs) or not variant:
        return
    try:
        sampling_settings(preview_request(run), is_turbo=variant.endswith("turbo"))
    except PreviewError as error:
        options = [f"run.preview_{name}" for name in ("steps", "shift", "guidance_scale")
                   if getattr(run, f"preview_{name}") is not None]
        raise ConfigError(f"{' and '.join(options)} cannot be rendered by this run's {variant} model (the one "
                          f"data.tensors_dir was preprocessed with): {error}") from None


class TrainingPreviews:
    """The preview hook of one training session. `emit(kind, **fields)` sends events (the trainer's
    own emitter, which only rank 0 has listeners for)."""

    def __init__(self, session, emit):
        run = session.config.run
        self.session, self.emit = session, emit
        self.every_steps, self.every_epochs = run.preview_every_steps, run.preview_every_epochs
        self.enabled = bool(self.every_steps or self.every_epochs)
        self.renderer: PreviewRenderer | None = None
        self.last_step: int | None = None
        self.vae = self.text_encoder = None
        self.songs: LatentProfile | None = None  # the dataset's latents, summed up at the first preview

    def check_models(self) -> None:
        """Find the VAE and text encoder previews need (rank 0, previews on): the ones preprocessing
        used (recorded in the manifest), else the ones beside the DiT. Called when the run starts, so
        a missing model stops it then. Raises TrainingError naming the model and the fix."""
        if self.enabled and self.session.fabric.global_rank == 0:
            self.vae, self.text_encoder = self._model_paths()

    def _model_paths(self) -> tuple[Path, Path]:
        from acestep.models.checkpoints import TEXT_ENCODER, VAE, resolve_model_path
        from acestep.models.encoders import DEFAULT_TEXT_ENCODER, DEFAULT_VAE

        recorded = self.session.samples.manifest.model
        dit = Path(self.session.checkpoint_info["checkpoint"])
        checkpoints_dir = self.session.config.model.checkpoints_dir
        paths = []
        for kind, key, default in ((VAE, "vae", DEFAULT_VAE), (TEXT_ENCODER, "text_encoder", DEFAULT_TEXT_ENCODER)):
            where = recorded.get(key) or dit.parent / default
            try:
                paths.append(resolve_model_path(where, kind, Path(checkpoints_dir) if checkpoints_dir else None))
            except AceStepError as exc:
                raise TrainingError(f"Previews are on (run.preview_every_*), but the {key.replace('_', ' ')} "
                                    f"cannot be found: {exc} Put it there, or set run.preview_every_steps and "
                                    "run.preview_every_epochs to 0.") from exc
        return paths[0], paths[1]

    def request(self) -> PreviewRequest:
        return preview_request(self.session.config.run)

    def after_step(self, step: int, epoch: int) -> None:
        """Called after each optimizer step."""
        if self.every_steps and step % self.every_steps == 0:
            self.render(step, epoch, f"every {self.every_steps} steps")

    def after_epoch(self, step: int, epochs_done: int, finished_epoch: int) -> None:
        """Called at the end of each epoch, `epochs_done` counting the one just finished."""
        if self.every_epochs and epochs_done % self.every_epochs == 0:
            self.render(step, finished_epoch, f"end of epoch {finished_epoch}")

    def render(self, step: int, epoch: int, reason: str) -> None:
        if self.session.fabric.global_rank != 0 or self.last_step == step:
            return  # one preview per step, when an epoch's end and a step count coincide
        self.last_step = step
        rng = rng_states()
        dtype = torch.get_default_dtype()
        try:
            with eagerly():  # compiled blocks (run.compile) would compile graphs for each strength
                files, effects, distances = self._render_files(step, epoch)
        except (AceStepError, RuntimeError) as exc:  # RuntimeError: e.g. CUDA out of memory
            self.emit("warning", step=step, epoch=epoch,
                      message=f"preview at step {step} failed ({type(exc).__name__}: {exc}); training goes on")
            return
        finally:
            restore_rng(rng)
            torch.set_default_dtype(dtype)
        strengths = ", ".join(map(strength_label, self.session.config.run.preview_strengths))
        effect = f"; adapter effect {effect_summary(effects)}" if effects else ""
        self.emit("preview", step=step, epoch=epoch, files=files, effect_db=effects or None,
                  songs_distance=distances,
                  message=f"{reason}: previews at strength {strengths} in {self.session.run_dir / PREVIEWS_FOLDER}"
                          + effect + f"; latent distance to the songs {distance_summary(distances)}")

    def _render_files(self, step: int, epoch: int) -> tuple[list[str], dict[str, float], dict[str, float]]:
        """Render and write each strength, and the folder's `preview.json`; returns the files
        (relative to the run folder), the adapter effects and the latent distances to the
        songs (`acestep.inference.effect`)."""
        s = self.session
        if self.renderer is None:
            self.renderer = PreviewRenderer(s.checkpoint_info["checkpoint"], vae=self.vae,
                                            text_encoder=self.text_encoder, device=s.fabric.device,
                                            dtype=s.model_dtype, keep_encoders=False)
        folder = s.run_dir / PREVIEWS_FOLDER / f"step-{step:06d}"
        request, files, renders, latents = self.request(), [], {}, {}
        settings = sampling_settings(request, self.renderer.is_turbo)  # the steps, shift and guidance rendered
        with s.averaged():  # the adapter the run hands out (its moving average, with optimizer.ema_decay)
            for strength in map(float, s.config.run.preview_strengths):
                sampled = self.renderer.latents(s.adapter.transformer, request, strength=strength)
                latents[strength] = sampled[0].cpu().numpy()
                renders[strength] = self.renderer.decode(sampled)
                for path in write_preview(renders[strength], folder, strength_name(strength)):
                    files.append(path.relative_to(s.run_dir).as_posix())
        if self.songs is None:
            self.songs = songs_profile(s.config.data.tensors_dir)
        effects, distances = adapter_effects(renders), songs_distances(latents, self.songs)
        record = {"step": step, "epoch": epoch, "caption": request.caption, "lyrics": request.lyrics,
                  "language": request.language, "bpm": request.bpm, "key": request.keyscale,
                  "time_signature": request.timesignature, "duration": request.duration, "seed": request.seed,
                  "steps": settings.steps, "shift": settings.shift, "guidance_scale": settings.guidance_scale,
                  "guidance": settings.guidance_used,
                  "checkpoint": str(s.checkpoint_info["checkpoint"]), "strengths": list(renders),
                  "files": [f"{strength_name(strength)}.wav" for strength in renders], "effect_db": effects,
                  "songs_distance": distances}
        write_atomically(folder / RECORD_NAME, json.dumps(record, indent=2) + "\n", PreviewError)
        return files, effects, distances
