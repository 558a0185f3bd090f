"""The third labeller: the ACE-Step 5 Hz LM describes a song from the DiT's audio codes.

The path the official trainer's "Auto-Label" offers (ace-step/ACE-Step-1.5,
`acestep/training/dataset_builder_modules/label_single.py` -> `understand_audio_from_codes`):

    audio (48 kHz stereo) -> VAE latents (25 Hz) -> the DiT's audio tokenizer -> FSQ codes (5 Hz)
    -> `<|audio_code_N|>` prompt (`lm_prompt`) -> the 5 Hz LM -> `<think>` fields + lyrics -> Labels

Where we differ, on purpose:
- the latents are the VAE posterior mean, so the same file always gives the same codes (upstream
  samples the posterior; its own retry path uses the mean);
- decoding has no constrained-decoding state machine (upstream forces the field order and value
  ranges while sampling); instead every value is checked after the fact and a wrong one is
  dropped with a note in `Labels.notes`. Sampling is otherwise upstream's auto-label setting:
  temperature 0.7, no top-k/top-p, no repetition penalty, here from a seeded generator;
- only the first `max_seconds` of a file are described (a note says so when a file is longer).

Models are loaded with transformers' and diffusers' own classes; nothing from a checkpoint runs.
"""

from __future__ import annotations

import gc
import hashlib
import inspect
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from acestep.captioning.labels import Labels
from acestep.captioning.lm_prompt import (
    CODEBOOK_SIZE,
    END_TOKENS,
    audio_code_token,
    build_understanding_prompt,
    parse_lm_output,
)
from acestep.errors import AceStepError, AudioError, CheckpointError, CheckpointNotFoundError
from acestep.gpu.precision import native_bf16
from acestep.models.checkpoints import (
    DIT,
    LM,
    VAE,
    default_checkpoints_dir,
    is_diffusers_layout,
    download_size,
    official_model,
    resolve_model_path,
)

__all__ = ["LmLabeller", "build_understanding_prompt", "parse_lm_output", "sample_tokens"]

OFFICIAL_TEMPERATURE = 0.7  # label_single.py: understand_audio_from_codes(temperature=0.7)
MIN_SECONDS = 30.0  # reduce_memory never goes below this
PROMPT_FORMAT = "understand-v1"  # bump when the prompt or the reading of the answer changes
DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}
_HASHED_SUFFIXES = (".json", ".safetensors", ".jinja", ".txt", ".pt")
_EDGE_BYTES = 1 << 20

def _resolve(name: str | Path, kind: str, what: str, checkpoints_dir: Path | None) -> Path:
    """resolve_model_path, with the download size in the message (and the command for any HF id)."""
    try:
        return resolve_model_path(name, kind, checkpoints_dir)
    except CheckpointNotFoundError as exc:
        text, message = str(name), str(exc).rstrip()
        size = download_size(text)
        message += ("" if message.endswith(".") else ".") + f" The 5Hz-LM labeller needs this {what}"
        message += f" (download size {size})." if size else "."
        if official_model(text) is None and text.count("/") == 1 and not text.startswith((".", "/", "~")):
            root = checkpoints_dir or default_checkpoints_dir()
            message += f" To fetch this Hugging Face id: acestep-trainer download {text} --checkpoints-dir {root}"
        raise CheckpointNotFoundError(message) from exc


def _folder_identity(folder: Path) -> str:
    """A short hash of a model folder's files (names, sizes, first and last MiB of each): changes
    when the weights change, costs a few MiB of reading."""
    digest = hashlib.sha256()
    for file in sorted(folder.iterdir()):
        if not file.is_file() or not file.name.endswith(_HASHED_SUFFIXES):
            continue
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(_EDGE_BYTES))
            if size > 2 * _EDGE_BYTES:
                handle.seek(size - _EDGE_BYTES)
                digest.update(handle.read())
    return digest.hexdigest()[:12]


def _pick_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AceStepError(f"device {name!r} was asked for but CUDA is not available here; use device='cpu'.")
    return device


def _pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if native_bf16(device):
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


@torch.no_grad()
def posterior_mean_latents(vae, audio: np.ndarray, chunk_seconds: float = 30.0,
                           overlap_seconds: float = 2.0) -> torch.Tensor:
    """Stereo 48 kHz audio `[2, n]` (n a multiple of 1920) -> the VAE posterior mean `[n / 1920, 64]`,
    fp32. Chunked with overlapping context like `preprocess.encode.encode_latents`, but without
    the noise draw, so it is deterministic."""
    from acestep.preprocess.encode import FRAMES_PER_SECOND, SAMPLES_PER_FRAME

    parameter = next(vae.parameters())
    frames = audio.shape[-1] // SAMPLES_PER_FRAME
    chunk = max(1, int(round(chunk_seconds * FRAMES_PER_SECOND)))
    overlap = int(round(overlap_seconds * FRAMES_PER_SECOND))
    waveform = torch.from_numpy(np.ascontiguousarray(audio))
    means = []
    for start in range(0, frames, chunk):
        stop = min(frames, start + chunk)
        lo, hi = max(0, start - overlap), min(frames, stop + overlap)
        piece = waveform[:, lo * SAMPLES_PER_FRAME: hi * SAMPLES_PER_FRAME]
        mean = vae.encode(piece[None].to(device=parameter.device, dtype=parameter.dtype)).latent_dist.mean
        means.append(mean[0, :, start - lo: stop - lo].float().cpu())
    return torch.cat(means, dim=1).transpose(0, 1).contiguous()


@torch.inference_mode()
def sample_tokens(model, input_ids: torch.Tensor, max_new_tokens: int, temperature: float,
                  stop_ids: set[int], generator: torch.Generator | None = None,
                  vocab_limit: int | None = None) -> tuple[list[int], bool]:
    """Generate after `input_ids` `[1, L]` as upstream's loop does (KV cache; softmax(logits / T)
    sampling, argmax when T is 0; no top-k/top-p). Stops after a token in `stop_ids` (kept) or at
    `max_new_tokens`. Ids at or above `vocab_limit` (the model's padding rows) are never chosen.
    Returns (new token ids, whether a stop token ended it)."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    # transformers renamed the argument (past_key_values -> cache); the cache object fills in place.
    cache_argument = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache = {cache_argument: DynamicCache(config=model.config)}
    step_input, new_ids = input_ids.to(device), []
    for _ in range(max_new_tokens):
        logits = model(input_ids=step_input, use_cache=True, **cache).logits[:, -1, :].float()
        if vocab_limit is not None and vocab_limit < logits.shape[-1]:
            logits[:, vocab_limit:] = float("-inf")
        if temperature > 0:
            probabilities = torch.softmax(logits / temperature, dim=-1)
            token = torch.multinomial(probabilities, 1, generator=generator)
        else:
            token = logits.argmax(dim=-1, keepdim=True)
        new_ids.append(int(token))
        if new_ids[-1] in stop_ids:
            return new_ids, True
        step_input = token
    return new_ids, False


@dataclass
class _Folders:
    lm: Path
    dit: Path
    vae: Path


@dataclass
class _Models:
    lm: torch.nn.Module
    tokenizer: object
    bundle: object  # AceStepBundle with the audio tokenizer
    vae: torch.nn.Module
    stop_ids: set[int]


def _load_lm(folder: Path, dtype: torch.dtype, device: torch.device):
    """The 5 Hz LM (`Qwen3ForCausalLM`) and its tokenizer, checked strictly."""
    from transformers import AutoTokenizer, Qwen3ForCausalLM

    from acestep.files import read_json_object

    config = read_json_object(folder / "config.json", CheckpointError, f"{folder / 'config.json'} does not exist.")
    if config.get("model_type") != "qwen3" or "Qwen3ForCausalLM" not in (config.get("architectures") or []):
        raise CheckpointError(
            f"{folder / 'config.json'} describes {config.get('architectures')} ({config.get('model_type')!r}), not "
            "the ACE-Step 5Hz LM (Qwen3ForCausalLM). Give an acestep-5Hz-lm-* folder."
        )
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.json").is_file():
        raise CheckpointNotFoundError(
            f"{folder} has no tokenizer (tokenizer.json, or vocab.json + merges.txt). Download the model again."
        )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    vocab = tokenizer.get_vocab()
    absent = [audio_code_token(code) for code in (0, CODEBOOK_SIZE - 1) if audio_code_token(code) not in vocab]
    if absent:
        raise CheckpointError(
            f"The tokenizer in {folder} lacks the audio-code tokens ({', '.join(absent)}): it is not an ACE-Step "
            "5Hz LM tokenizer. Give an acestep-5Hz-lm-* folder."
        )
    model, info = Qwen3ForCausalLM.from_pretrained(folder, dtype=dtype, output_loading_info=True)
    problems = {kind: keys for kind, keys in info.items() if keys and kind != "error_msgs"}
    if problems:
        raise CheckpointError(f"{folder / 'model.safetensors'} does not match its config.json: {problems}.")
    if len(tokenizer) > model.config.vocab_size:
        raise CheckpointError(f"{folder}: the tokenizer has {len(tokenizer)} tokens but the model only "
                              f"{model.config.vocab_size} embeddings; the files are of different models.")
    stop_ids = {vocab[token] for token in END_TOKENS if token in vocab}
    if tokenizer.eos_token_id is not None:
        stop_ids.add(tokenizer.eos_token_id)
    return model.to(device).eval(), tokenizer, stop_ids


class LmLabeller:
    """Labels a song with the ACE-Step 5 Hz LM from the DiT's audio codes.

    `lm`, `dit`, `vae`: a folder, a folder name in the checkpoints directory, or a Hugging Face id
    (`org/name`); `vae` None means the DiT pipeline's `vae/` or `vae` in the checkpoints dir.
    `temperature` 0 decodes greedily. Nothing loads before `load()` or the first `label()`.
    Missing models raise `CheckpointNotFoundError` naming the model, its size and the command.
    """

    name = "lm"

    def __init__(self, lm: str | Path = "acestep-5Hz-lm-1.7B", dit: str | Path = "acestep-v15-turbo",
                 vae: str | Path | None = None, device: str | None = None, dtype: str = "auto",
                 max_seconds: float = 240.0, max_new_tokens: int = 2048, checkpoints_dir: Path | None = None,
                 seed: int = 0, temperature: float = OFFICIAL_TEMPERATURE):
        if not max_seconds > 0:
            raise ValueError(f"max_seconds must be above 0, got {max_seconds}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if not temperature >= 0:
            raise ValueError(f"temperature must be 0 (greedy) or above, got {temperature}")
        if dtype != "auto" and dtype not in DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")
        self.lm, self.dit, self.vae = lm, dit, vae
        self.device_name, self.dtype_name = device, dtype
        self.max_seconds, self.max_new_tokens = float(max_seconds), int(max_new_tokens)
        self.checkpoints_dir = Path(checkpoints_dir) if checkpoints_dir else None
        self.seed, self.temperature = int(seed), float(temperature)
        self._folders: _Folders | None = None
        self._identity: str | None = None
        self._models: _Models | None = None

    # --- models ---

    def folders(self) -> _Folders:
        """The three model folders, resolved once (raises CheckpointNotFoundError when absent)."""
        if self._folders is None:
            lm = _resolve(self.lm, LM, "5 Hz LM", self.checkpoints_dir)
            dit = _resolve(self.dit, DIT, "DiT (the audio tokenizer is part of it)", self.checkpoints_dir)
            vae = self.vae
            if vae is None:
                vae = dit / "vae" if is_diffusers_layout(dit) and (dit / "vae").is_dir() else "vae"
            self._folders = _Folders(lm, dit, _resolve(vae, VAE, "VAE", self.checkpoints_dir))
        return self._folders

    def fingerprint(self) -> str:
        """The models' identities (folder name + content hash) and every setting the labels depend on."""
        folders = self.folders()
        if self._identity is None:
            self._identity = ",".join(f"{kind}={folder.name}:{_folder_identity(folder)}" for kind, folder in
                                      (("lm", folders.lm), ("dit", folders.dit), ("vae", folders.vae)))
        return (f"{self._identity},max_seconds={self.max_seconds:g},max_new_tokens={self.max_new_tokens},"
                f"temperature={self.temperature:g},seed={self.seed},dtype={self.dtype_name},prompt={PROMPT_FORMAT}")

    def load(self) -> None:
        """Load the VAE, the DiT's audio tokenizer and the LM (once; `unload` frees them)."""
        if self._models is not None:
            return
        from acestep.models.encoders import load_vae
        from acestep.models.load import load_acestep

        folders = self.folders()
        device = _pick_device(self.device_name)
        dtype = _pick_dtype(self.dtype_name, device)
        lm, tokenizer, stop_ids = _load_lm(folders.lm, dtype, device)  # first: the likeliest to be wrong
        bundle = load_acestep(folders.dit, dtype=dtype, device=device, components=("audio_tokenizer",))
        vae = load_vae(folders.vae, dtype=dtype, device=device).eval()
        self._models = _Models(lm=lm, tokenizer=tokenizer, bundle=bundle, vae=vae, stop_ids=stop_ids)

    def unload(self) -> None:
        self._models = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @property
    def tokenizer(self):
        self.load()
        return self._models.tokenizer

    def reduce_memory(self) -> bool:
        """After an out-of-memory error: describe only half as many seconds (not below 30 s).
        False when already at the floor."""
        if self.max_seconds <= MIN_SECONDS:
            return False
        self.max_seconds = max(MIN_SECONDS, self.max_seconds / 2)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return True

    # --- labelling ---

    def audio_codes(self, path: Path) -> list[int]:
        """The 5 Hz FSQ codes (0..63999) of the first `max_seconds` of a file: one per 5 latent
        frames, the last window padded with the silence latent as upstream does. Deterministic.
        Raises AudioError for an unusable file."""
        from acestep.audio.io import load_audio
        from acestep.preprocess.encode import trim_to_whole_frames

        self.load()
        models = self._models
        audio = trim_to_whole_frames(load_audio(path, max_seconds=self.max_seconds))
        if audio.shape[-1] == 0:
            raise AudioError(path, "is shorter than one VAE frame (40 ms)")
        latents = posterior_mean_latents(models.vae, audio)
        place = next(models.bundle.audio_tokenizer.parameters())
        with torch.inference_mode():
            _, indices, _ = models.bundle.tokenize(latents[None].to(device=place.device, dtype=place.dtype))
        return [int(code) for code in indices[0].reshape(-1).tolist()]

    def understanding_prompt(self, path: Path) -> str:
        """The official understand prompt for a file's audio codes."""
        return build_understanding_prompt(self.audio_codes(path), self.tokenizer)

    def label(self, path: Path) -> Labels:
        """Describe one file: codes -> prompt -> generation -> `Labels(source="lm")` with the raw
        answer kept (`parsed` false when it cannot be read)."""
        from acestep.audio.io import probe_audio

        path = Path(path)
        prompt = self.understanding_prompt(path)
        models = self._models
        input_ids = models.tokenizer(prompt, return_tensors="pt").input_ids
        device = next(models.lm.parameters()).device
        generator = torch.Generator(device=device).manual_seed(self.seed)
        new_ids, stopped = sample_tokens(models.lm, input_ids, self.max_new_tokens, self.temperature,
                                         models.stop_ids, generator, vocab_limit=len(models.tokenizer))
        labels = parse_lm_output(models.tokenizer.decode(new_ids, skip_special_tokens=False))
        if not stopped:
            labels.notes.append(f"the LM was cut off at max_new_tokens={self.max_new_tokens}; raise it if lyrics "
                                "are missing")
        duration = probe_audio(path).duration
        if duration > self.max_seconds + 0.5:
            labels.notes.append(f"described the first {self.max_seconds:g} s of {duration:.0f} s")
        return labels
