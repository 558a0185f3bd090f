"""`preprocess_dataset`: a dataset JSON in, a tensors directory out.

For every sample: audio -> 48 kHz stereo -> (normalise) -> VAE latents; caption prompt -> Qwen3;
lyrics prompt -> Qwen3 token embeddings; both -> the checkpoint's condition encoder. One pass
keeps the VAE, the text encoder and the condition encoder loaded together; the low-VRAM mode runs
the VAE and text encoder first (intermediates on disk), frees them, then the condition encoder.
Both give bit-identical tensors.

Robustness: a bad audio file becomes a `failed` entry and the batch goes on; the manifest is
rewritten (atomically) after every sample, so a cancel or a crash leaves a consistent folder; a
re-run skips every sample whose audio, labels, settings and model are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from acestep.audio.analysis import file_content_hash
from acestep.audio.io import NORMALIZATION_MODES, load_audio, normalize_loudness
from acestep.dataset import Dataset, Sample, load_dataset, training_caption
from acestep.errors import AceStepError, PreprocessError
from acestep.gpu.precision import native_bf16
from acestep.models.checkpoints import DIT, TEXT_ENCODER, VAE, resolve_model_path
from acestep.models.config import read_dit_config
from acestep.preprocess import encode
from acestep.preprocess.prompts import caption_prompt, lyric_prompt
from acestep.preprocess.manifest import Manifest, ManifestFailure, ManifestSample, read_manifest, write_manifest
from acestep.preprocess.tensors import load_tensors, save_tensors, write_sample

INTERMEDIATE_DIR = ".pass1"
FRONT_KEYS = ("target_latents", "text_hidden", "lyric_hidden")  # what pass 1 hands to pass 2
MAX_SECONDS_LIMIT = 600.0  # the silence latent covers 600 s


@dataclass
class PreprocessSettings:
    """Everything besides the dataset and models that changes the tensors."""

    max_duration: float = 240.0
    normalization: str = "none"
    low_vram: bool = False
    seed: int = 0
    chunk_seconds: float = 30.0
    overlap_seconds: float = 2.0
    device: str | None = None  # None: cuda, then mps, then cpu
    dtype: str | None = None  # None: bf16 on CUDA, fp32 elsewhere

    def validate(self) -> None:
        if not 0 < self.max_duration <= MAX_SECONDS_LIMIT:
            raise PreprocessError(f"max_duration must be in (0, {MAX_SECONDS_LIMIT:g}] seconds, "
                                  f"got {self.max_duration}")
        if self.normalization not in NORMALIZATION_MODES:
            raise PreprocessError(f"normalization must be one of {', '.join(NORMALIZATION_MODES)}, "
                                  f"got {self.normalization!r}")
        if self.chunk_seconds <= 0 or self.overlap_seconds < 0:
            raise PreprocessError("chunk_seconds must be positive and overlap_seconds not negative")

    def tensor_settings(self) -> dict:
        """The settings that change tensor values (not the memory mode or the device)."""
        return {"max_duration": self.max_duration, "normalization": self.normalization, "seed": self.seed,
                "chunk_seconds": self.chunk_seconds, "overlap_seconds": self.overlap_seconds}


@dataclass
class PreprocessProgress:
    """One progress report: `index` of `total` samples, what happens to `source` now."""

    index: int
    total: int
    source: str
    status: str  # "encoding", "done", "skipped", "failed", "pass 2"
    elapsed: float
    eta: float | None
    message: str = ""


@dataclass
class PreprocessSummary:
    out_dir: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[ManifestFailure] = field(default_factory=list)
    cancelled: bool = False
    cut: list[str] = field(default_factory=list)  # encoded, but longer than max_duration: only its start
    max_duration: float | None = None

    def describe(self) -> str:
        lines = [f"{len(self.done)} encoded, {len(self.skipped)} unchanged (skipped), {len(self.failed)} failed"
                 + (" - cancelled, run again to continue" if self.cancelled else "")]
        if self.cut:
            lines.append(f"  {len(self.cut)} longer than --max-duration: only their first {self.max_duration:g} s "
                         "were encoded, and training never sees the rest (raise --max-duration, up to "
                         f"{MAX_SECONDS_LIMIT:g}, or split the songs: `acestep-trainer split`):")
            lines += [f"  cut: {source}" for source in self.cut]
        lines += [f"  failed: {f.source}: {f.reason}" for f in self.failed]
        return "\n".join(lines)


@dataclass
class _Job:
    sample: Sample
    source: str
    audio_path: Path
    id: str
    key: str
    source_hash: str
    caption: str


def sample_id(source: str) -> str:
    """Stable file-system-safe id from the audio path in the dataset (unique per path)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source).name).strip("._") or "sample"
    return f"{stem[:60]}-{hashlib.sha256(source.encode()).hexdigest()[:8]}"


def _pick_device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _pick_dtype(name: str | None, device: torch.device) -> torch.dtype:
    if name:
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]
    if native_bf16(device):
        return torch.bfloat16
    return torch.float32


def _sample_seed(base_seed: int, identifier: str) -> int:
    return (base_seed * 1_000_003 + int(hashlib.sha256(identifier.encode()).hexdigest()[:8], 16)) % (2**63)


@dataclass
class _Models:
    """Where the three models are, and their identity for the manifest."""

    dit: Path
    vae: Path
    text_encoder: Path
    identity: dict


def _locate_models(checkpoint, vae, text_encoder, checkpoints_dir) -> _Models:
    from acestep.models.load import encoder_digest

    dit = resolve_model_path(checkpoint, DIT, checkpoints_dir)
    vae_path = resolve_model_path(vae if vae else dit.parent / "vae", VAE, checkpoints_dir)
    text_path = resolve_model_path(text_encoder if text_encoder else dit.parent / "Qwen3-Embedding-0.6B",
                                   TEXT_ENCODER, checkpoints_dir)
    config = read_dit_config(dit)
    identity = {"checkpoint": str(dit), "variant": config.variant, "fingerprint": config.fingerprint,
                "weights_digest": encoder_digest(dit), "vae": str(vae_path), "text_encoder": str(text_path),
                "timbre_fix_frame": int(config.raw.get("timbre_fix_frame", 750))}
    return _Models(dit, vae_path, text_path, identity)


def _plan(dataset: Dataset, settings: PreprocessSettings, identity: dict) -> list[_Job]:
    jobs = []
    shared = json.dumps({"settings": settings.tensor_settings(), "model": identity["fingerprint"],
                         "digest": identity["weights_digest"], "tag": dataset.trigger_tag,
                         "position": dataset.tag_position}, sort_keys=True)
    for sample in dataset.samples:
        audio_path = dataset.audio_path(sample)
        caption = training_caption(sample, dataset.trigger_tag, dataset.tag_position)
        try:
            source_hash = file_content_hash(audio_path)
        except (OSError, AceStepError):
            source_hash = ""  # unreadable: the encode step reports why
        labels = json.dumps({**asdict(sample), "caption_used": caption}, sort_keys=True)
        key = hashlib.sha256(f"{shared}|{labels}|{source_hash}".encode()).hexdigest()[:24]
        jobs.append(_Job(sample, sample.audio, audio_path, sample_id(sample.audio), key, source_hash, caption))
    return jobs


class _Run:
    """State of one preprocessing run: the manifest being rebuilt and the progress clock."""

    def __init__(self, out_dir: Path, manifest: Manifest, total: int, position: dict[str, int], progress,
                 max_duration: float):
        self.out_dir, self.manifest, self.total, self.progress = out_dir, manifest, total, progress
        self.position = position  # sample id -> its place in the dataset
        self.start = time.monotonic()
        self.finished = 0  # samples settled: skipped, encoded or failed
        self.skipped = 0
        self.encoding_since: float | None = None  # when the first sample to encode began
        self.summary = PreprocessSummary(out_dir=out_dir, max_duration=max_duration)

    def report(self, index: int, source: str, status: str, message: str = "") -> None:
        """Pass one progress event on. The ETA is paced by the samples encoded so far, from the
        start of the first: skipped samples take no time and model loading happens once, so
        counting either would promise the end too soon."""
        now = time.monotonic()
        if status == "encoding" and self.encoding_since is None:
            self.encoding_since = now
        if self.progress is None:
            return
        encoded = self.finished - self.skipped
        eta = None
        if encoded and self.encoding_since is not None:
            eta = (now - self.encoding_since) / encoded * (self.total - self.finished)
        self.progress(PreprocessProgress(index, self.total, source, status, now - self.start, eta, message))

    def record(self, entry: ManifestSample | ManifestFailure) -> None:
        if isinstance(entry, ManifestSample):
            samples = [s for s in self.manifest.samples if s.id != entry.id] + [entry]
            # In the dataset's order whatever order they were encoded in, so a run resumed after a
            # stop gives the same manifest (and training the same batches) as one run through.
            self.manifest.samples = sorted(samples, key=lambda s: self.position[s.id])
            self.manifest.failed = [f for f in self.manifest.failed if f.source != entry.source]
        else:
            self.manifest.failed = [f for f in self.manifest.failed if f.source != entry.source] + [entry]
            self.manifest.samples = [s for s in self.manifest.samples if s.source != entry.source]
            self.summary.failed.append(entry)
        write_manifest(self.out_dir, self.manifest)


def _start_manifest(out_dir: Path, dataset: Dataset, dataset_label: str, settings: PreprocessSettings,
                    identity: dict, jobs: list[_Job], position: dict[str, int]) -> Manifest:
    """The manifest to continue, under this run's settings and trigger tag: the samples of the
    existing one (made with this model) whose tensors are current for one of `jobs` (`position`:
    a job's index by its id), in the dataset's order; a sample whose audio, labels or settings
    changed leaves it until it is encoded again, so a run stopped half-way never lists tensors
    made under other settings."""
    previous = None
    if (out_dir / "manifest.json").is_file():
        previous = read_manifest(out_dir)
        made_with = previous.model
        if (made_with.get("fingerprint"), made_with.get("weights_digest")) != (
                identity["fingerprint"], identity["weights_digest"]):
            raise PreprocessError(
                f"{out_dir} holds tensors made with {made_with.get('checkpoint')} (variant "
                f"{made_with.get('variant')}); this run uses {identity['checkpoint']}. Choose another output "
                "folder: mixing tensors of two checkpoints would train on wrong conditions."
            )
    kept = [s for s in previous.samples if s.id in position and _holds(s, jobs[position[s.id]], out_dir)] \
        if previous else []
    kept.sort(key=lambda s: position[s.id])  # the dataset's order, as `_Run.record` keeps it
    return Manifest(model=identity, settings=settings.tensor_settings(), trigger_tag=dataset.trigger_tag,
                    tag_position=dataset.tag_position, dataset=dataset_label, samples=kept, failed=[])


def _is_current(manifest: Manifest, job: _Job, out_dir: Path) -> bool:
    return any(_holds(sample, job, out_dir) for sample in manifest.samples)


def _holds(sample: ManifestSample, job: _Job, out_dir: Path) -> bool:
    """Whether `sample`'s tensors file is on disk and holds what `job` would encode."""
    return (sample.id, sample.key) == (job.id, job.key) and (out_dir / sample.tensors).is_file()


def preprocess_dataset(dataset: Dataset | str | Path, out_dir: str | Path, checkpoint: str | Path,
                       vae: str | Path | None = None, text_encoder: str | Path | None = None,
                       checkpoints_dir: Path | None = None, settings: PreprocessSettings | None = None,
                       progress: Callable[[PreprocessProgress], None] | None = None,
                       should_stop: Callable[[], bool] | None = None) -> PreprocessSummary:
    """Encode every sample of `dataset` into `out_dir` (see the module docstring).

    `checkpoint` names the DiT; the VAE and the text encoder default to the `vae/` and
    `Qwen3-Embedding-0.6B/` folders beside it. `should_stop` is polled between samples: when it
    returns true the run stops with a consistent folder and `summary.cancelled` set.
    Raises `PreprocessError` / `CheckpointError` for problems that stop the whole run.
    """
    settings = settings or PreprocessSettings()
    settings.validate()
    dataset_label = ""
    if not isinstance(dataset, Dataset):
        dataset_label = str(Path(dataset).resolve())
        dataset = load_dataset(dataset)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    models = _locate_models(checkpoint, vae, text_encoder, checkpoints_dir)
    jobs = _plan(dataset, settings, models.identity)
    position = {job.id: index for index, job in enumerate(jobs)}  # the dataset's order, kept in the manifest
    manifest = _start_manifest(out_dir, dataset, dataset_label, settings, models.identity, jobs, position)
    write_manifest(out_dir, manifest)
    run = _Run(out_dir, manifest, len(jobs), position, progress, settings.max_duration)
    todo = []
    for index, job in enumerate(jobs, start=1):
        if _is_current(manifest, job, out_dir):
            run.summary.skipped.append(job.source)
            run.finished += 1
            run.skipped += 1
            run.report(index, job.source, "skipped")
        else:
            todo.append((index, job))
    stop = should_stop or (lambda: False)
    if todo:
        device = _pick_device(settings.device)
        dtype = _pick_dtype(settings.dtype, device)
        encoder = _TwoPassEncoder if settings.low_vram else _OnePassEncoder
        encoder(models, settings, device, dtype, run).encode(todo, stop)
    return run.summary


class _OnePassEncoder:
    """VAE, text encoder and condition encoder loaded together; one sample at a time."""

    def __init__(self, models: _Models, settings: PreprocessSettings, device, dtype, run: _Run):
        self.models, self.settings, self.device, self.dtype, self.run = models, settings, device, dtype, run

    def load_front(self):
        from acestep.models.encoders import load_text_encoder, load_vae

        vae = load_vae(self.models.vae, dtype=self.dtype, device=self.device)
        text_encoder, tokenizer = load_text_encoder(self.models.text_encoder, dtype=self.dtype, device=self.device)
        return vae, text_encoder, tokenizer

    def load_condition(self):
        from acestep.models.load import load_acestep

        bundle = load_acestep(self.models.dit, dtype=self.dtype, device=self.device, components=("condition_encoder",))
        timbre = bundle.silence_latent[0, : self.models.identity["timbre_fix_frame"]]
        return bundle.condition_encoder, timbre

    def front(self, job: _Job, vae, text_encoder, tokenizer) -> dict[str, torch.Tensor]:
        """Audio and text of one sample: latents, caption hidden states, lyric embeddings."""
        limit = round(self.settings.max_duration * encode.SAMPLE_RATE)
        # one frame more than is encoded tells a file longer than max_duration from one that fits
        audio = load_audio(job.audio_path, max_seconds=self.settings.max_duration + 1 / encode.FRAMES_PER_SECOND)
        cut = audio.shape[-1] > limit
        audio = audio[..., :limit]
        audio = encode.trim_to_whole_frames(normalize_loudness(audio, encode.SAMPLE_RATE, self.settings.normalization))
        if audio.shape[-1] == 0:
            raise PreprocessError(f"{job.audio_path}: shorter than one latent frame (40 ms)")
        generator = torch.Generator().manual_seed(_sample_seed(self.settings.seed, job.id))
        latents = encode.encode_latents(vae, audio, generator, self.settings.chunk_seconds,
                                        self.settings.overlap_seconds)
        duration = audio.shape[-1] / encode.SAMPLE_RATE
        sample = job.sample
        text = encode.encode_caption(text_encoder, tokenizer, caption_prompt(
            job.caption, sample.bpm, sample.timesignature, sample.keyscale, duration))
        lyrics = encode.embed_lyrics(text_encoder, tokenizer, lyric_prompt(
            sample.lyrics, sample.language, sample.instrumental))
        if cut:
            self.run.summary.cut.append(job.source)
        return {"target_latents": latents, "text_hidden": text, "lyric_hidden": lyrics}

    def finish(self, index: int, job: _Job, front: dict, condition_encoder, timbre) -> None:
        states, mask = encode.encode_condition(condition_encoder, front["text_hidden"], front["lyric_hidden"], timbre)
        frames = int(front["target_latents"].shape[0])
        file_name = f"{job.id}.safetensors"
        write_sample(self.run.out_dir, file_name,
                     {"target_latents": front["target_latents"], "encoder_hidden_states": states,
                      "encoder_attention_mask": mask.bool()},
                     {"id": job.id, "source": job.source, "caption": job.caption})
        self.run.record(ManifestSample(id=job.id, source=job.source, tensors=file_name, frames=frames,
                                       duration=frames / encode.FRAMES_PER_SECOND, source_hash=job.source_hash,
                                       key=job.key, caption=job.caption))
        self.run.summary.done.append(job.source)
        self.run.finished += 1
        self.run.report(index, job.source, "done", f"{frames} frames")

    def fail(self, index: int, job: _Job, reason: str) -> None:
        self.run.record(ManifestFailure(source=job.source, reason=reason))
        self.run.finished += 1
        self.run.report(index, job.source, "failed", reason)

    def front_pass(self, todo: list[tuple[int, _Job]], stop: Callable[[], bool],
                   handle: Callable[[int, _Job, dict], None]) -> None:
        """Decode and encode audio and text of each sample, passing the result to `handle`.
        The VAE and text encoder live only inside this call, so they are freed when it returns."""
        vae, text_encoder, tokenizer = self.load_front()
        for index, job in todo:
            if stop():
                self.run.summary.cancelled = True
                return
            self.run.report(index, job.source, "encoding")
            try:
                front = self.front(job, vae, text_encoder, tokenizer)
            except (AceStepError, torch.OutOfMemoryError) as exc:
                self.fail(index, job, _reason(exc))
                continue
            handle(index, job, front)

    def encode(self, todo: list[tuple[int, _Job]], stop: Callable[[], bool]) -> None:
        condition_encoder, timbre = self.load_condition()
        self.front_pass(todo, stop, lambda index, job, front: self.finish(index, job, front, condition_encoder, timbre))


class _TwoPassEncoder(_OnePassEncoder):
    """Low VRAM: pass 1 (VAE + text encoder) writes intermediates, the models are freed, then
    pass 2 runs the condition encoder. Same computations, so the same tensors as one pass."""

    def encode(self, todo: list[tuple[int, _Job]], stop: Callable[[], bool]) -> None:
        work = self.run.out_dir / INTERMEDIATE_DIR
        work.mkdir(exist_ok=True)
        ready = []

        def keep(index: int, job: _Job, front: dict) -> None:
            save_tensors(work / f"{job.id}.safetensors", front, {"id": job.id})
            ready.append((index, job))

        self.front_pass(todo, stop, keep)
        _free_memory(self.device)
        if ready:
            condition_encoder, timbre = self.load_condition()
            for index, job in ready:
                self.run.report(index, job.source, "pass 2")
                front = load_tensors(work / f"{job.id}.safetensors", FRONT_KEYS)
                self.finish(index, job, front, condition_encoder, timbre)
        shutil.rmtree(work, ignore_errors=True)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, torch.OutOfMemoryError):
        return "out of GPU memory; lower max_duration or use the low-VRAM (two-pass) mode"
    return getattr(exc, "reason", None) or str(exc)


def _free_memory(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
