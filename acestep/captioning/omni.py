"""The ACE-Step captioner and lyrics transcriber: two Qwen2.5-Omni-7B fine-tunes, text out.

- ACE-Step/acestep-captioner: prompt "*Task* Describe this audio in detail" -> a prose style
  caption (genre, instruments, vocals, mood, structure);
- ACE-Step/acestep-transcriber: prompt "*Task* Transcribe this audio in detail" ->
  "# Languages\\n<code>\\n\\n# Lyrics\\n[Verse 1]\\n..." (both prompts from the model cards, which
  say "the usage is the same as Qwen2.5 Omni-7B").

How they run here, and why:
- transformers' `Qwen2_5OmniThinkerForConditionalGeneration` loads only the "thinker" (audio
  encoder + language model) from the full checkpoint: the talker and token2wav weights that
  speak are skipped, nothing reads `spk_dict.pt` (a pickle), and no code from the repo runs.
- Inputs are built by transformers' `Qwen2AudioProcessor` from the checkpoint's own tokenizer,
  Whisper feature extractor and chat template. It expands the audio placeholder exactly as
  `Qwen2_5OmniProcessor` does (features padded to the checkpoint's 300 s window, one token per
  40 ms); that class cannot be used here because it also builds a video processor, which needs
  torchvision, and torchvision wheels pin exact torch builds.
- Audio: `load_audio` at 16 kHz, the first `max_seconds` only, channels averaged to mono.
  The model reads up to 300 s in one pass, so there is no chunking; a longer file is cut and a
  note says so.
- Decoding is greedy (`do_sample=False`), so a file always gets the same labels.
- dtype "auto": bf16 on a CUDA GPU that supports it, fp16 on other GPUs, fp32 on the CPU.
  attention "auto": flash_attention_2 on CUDA when the flash_attn package imports, else sdpa.
- cpu_offload: accelerate's `device_map="auto"` with the GPU capped at `OFFLOAD_GPU_FRACTION` of
  its free memory; the layers that do not fit stay in CPU RAM and are moved in when used
  (slower, but a 16 GB card can run the 7B model in bf16).
"""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import json
from pathlib import Path

import torch

from acestep.audio.io import load_audio, probe_audio
from acestep.captioning.labels import Labels
from acestep.captioning.omni_files import (CAPTIONER_REPO, MODELS, TRANSCRIBER_REPO, OmniModel, check_model_type,
                                           load_processor, local_folder, missing_files, model_identity,
                                           resolve_folder)
from acestep.captioning.parse import parse_caption_output, parse_transcription_output
from acestep.errors import EnvironmentProblem
from acestep.gpu.precision import native_bf16

__all__ = ["CAPTIONER_REPO", "TRANSCRIBER_REPO", "MODELS", "OmniLabeller", "OmniModel", "missing_files"]

KINDS = ("captioner", "transcriber")
SAMPLE_RATE = 16_000
MIN_SECONDS = 30.0  # reduce_memory never cuts the audio below this
OFFLOAD_GPU_FRACTION = 0.6  # with cpu_offload, weights may fill this share of the free GPU memory
PROMPT_VERSION = 1  # bump when the prompt or the reading of the answer changes (it is in the cache key)
# Qwen2.5-Omni's own system prompt; without one its chat template inserts "You are a helpful assistant."
SYSTEM_PROMPT = ("You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
                 "auditory and visual inputs, as well as generating text and speech.")
DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "half": torch.float16, "fp32": torch.float32, "float32": torch.float32}
ATTENTIONS = ("auto", "sdpa", "flash_attention_2", "eager")


class OmniLabeller:
    """One of the two Qwen2.5-Omni labellers, loaded on demand.

    `model` is a local folder, a folder name in the checkpoints directory, or a Hugging Face id
    ("org/name", downloaded into the checkpoints directory on first use). Nothing is read or
    downloaded here; `load()` (or the first `label()`) does it. Raises ValueError for an
    unknown kind, dtype or attention, a non-positive max_seconds or max_new_tokens, and for
    cpu_offload on the CPU.
    """

    def __init__(self, kind: str, model: str | Path, device: str | None = None, dtype: str = "auto",
                 attention: str = "auto", cpu_offload: bool = False, max_seconds: float = 240.0,
                 max_new_tokens: int = 1024, checkpoints_dir: Path | None = None):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, found {kind!r}")
        if dtype != "auto" and dtype not in DTYPES:
            raise ValueError(f"dtype must be auto or one of {', '.join(DTYPES)}, found {dtype!r}")
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, found {attention!r}")
        if not max_seconds > 0 or int(max_new_tokens) < 1:
            raise ValueError(f"max_seconds and max_new_tokens must be positive, "
                             f"found {max_seconds} and {max_new_tokens}")
        self.kind = kind
        self.source = str(model)
        if device in (None, "", "auto"):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = str(device)
        if cpu_offload and not self.device.startswith("cuda"):
            raise ValueError(f"cpu_offload moves layers from the GPU to CPU RAM; on device {self.device!r} "
                             "there is no GPU to offload from: leave cpu_offload off")
        self.dtype = dtype
        self.attention = attention
        self.cpu_offload = bool(cpu_offload)
        self.max_seconds = float(max_seconds)
        self.max_new_tokens = int(max_new_tokens)
        self.checkpoints_dir = Path(checkpoints_dir) if checkpoints_dir else None
        self.model = None  # the loaded Qwen2_5OmniThinkerForConditionalGeneration, or None
        self.processor = None
        self._load_ran_out_of_memory = False

    @property
    def name(self) -> str:
        return self.kind

    @property
    def info(self) -> OmniModel:
        return MODELS[self.kind]

    # --- where the model is ---

    def _root(self) -> Path:
        from acestep.models.checkpoints import default_checkpoints_dir

        return self.checkpoints_dir or default_checkpoints_dir()

    def local_folder(self) -> Path | None:
        """The model's folder if it is on disk (see `omni_files.local_folder`); never downloads."""
        return local_folder(self.source, self._root())

    def model_folder(self) -> Path:
        """The complete local folder, downloading an HF id into the checkpoints directory first.
        Raises CheckpointNotFoundError (what is missing, the download size, the command)."""
        return resolve_folder(self.source, self.kind, self._root())

    def fingerprint(self) -> str:
        """What decides the output, as one cache key: the model (resolved folder, sha256 of its
        config.json, the Hub revision it was downloaded at, its weight file names and sizes; for an
        HF id not yet downloaded, the id) and the settings (kind, prompt and its version, system
        prompt, max_seconds, max_new_tokens, dtype). The key of an HF id changes once it is downloaded."""
        model = model_identity(self.source, self._root())
        settings = {
            "kind": self.kind, "prompt": self.info.prompt, "prompt_version": PROMPT_VERSION,
            "system": SYSTEM_PROMPT, "max_seconds": self.max_seconds, "max_new_tokens": self.max_new_tokens,
            "dtype": str(self.torch_dtype()).removeprefix("torch."),
        }
        digest = hashlib.sha256(json.dumps([model, settings], sort_keys=True).encode()).hexdigest()
        return f"{self.kind}-v{PROMPT_VERSION}-{digest[:32]}"

    # --- loading ---

    def torch_dtype(self) -> torch.dtype:
        if self.dtype != "auto":
            return DTYPES[self.dtype]
        if self.device.startswith("cuda") and torch.cuda.is_available():
            return torch.bfloat16 if native_bf16(self.device) else torch.float16
        return torch.float16 if self.device.startswith("mps") else torch.float32

    def attention_implementation(self) -> str:
        """The attention kernel to load with; raises EnvironmentProblem when flash_attention_2 is
        asked for and cannot run."""
        on_cuda = self.device.startswith("cuda")
        if self.attention == "auto":
            return "flash_attention_2" if on_cuda and _flash_attn_imports() else "sdpa"
        if self.attention == "flash_attention_2":
            if not on_cuda:
                raise EnvironmentProblem(f"flash_attention_2 runs on CUDA GPUs only, the device is {self.device!r}: "
                                         "use attention 'sdpa' or 'auto'")
            if not _flash_attn_imports():
                raise EnvironmentProblem("attention 'flash_attention_2' needs the flash_attn package, which does not "
                                         "import here: install it (pip install flash-attn) or use 'sdpa' or 'auto'")
        return self.attention

    def load(self) -> None:
        """Load the processor and the model (no-op when loaded). Raises CheckpointNotFoundError,
        CheckpointError for a folder of another model, EnvironmentProblem for a device or
        attention kernel this machine lacks, torch.OutOfMemoryError when the weights do not fit."""
        if self.model is not None:
            return
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise EnvironmentProblem(f"device {self.device!r} was asked for, but torch sees no CUDA GPU "
                                     f"(torch {torch.__version__}): install a CUDA build of torch or use device 'cpu'")
        folder = self.model_folder()
        check_model_type(folder, self.kind)
        from transformers import Qwen2_5OmniThinkerForConditionalGeneration

        processor = load_processor(folder)
        placement = self._placement()
        try:
            model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(
                folder, dtype=self.torch_dtype(), attn_implementation=self.attention_implementation(), **placement)
        except torch.OutOfMemoryError:
            self._load_ran_out_of_memory = True
            _free_memory()
            raise
        self.model, self.processor = model.eval(), processor
        self._load_ran_out_of_memory = False

    def _placement(self) -> dict:
        if not self.cpu_offload:
            return {"device_map": {"": self.device}}
        from accelerate.utils import get_max_memory

        index = torch.device(self.device).index or 0
        free, _total = torch.cuda.mem_get_info(index)
        # Only this GPU and the CPU: accelerate would otherwise spread the layers over every GPU.
        max_memory = {index: int(free * OFFLOAD_GPU_FRACTION), "cpu": get_max_memory()["cpu"]}
        return {"device_map": "auto", "max_memory": max_memory}

    def unload(self) -> None:
        """Drop the model and processor and give their GPU memory back (a later label() reloads)."""
        self.model = None
        self.processor = None
        _free_memory()

    def reduce_memory(self) -> bool:
        """After an out-of-memory error: halve max_seconds (never below 30 s), then turn on
        cpu_offload (the model is unloaded so the next label() reloads it offloaded). When the
        weights themselves did not fit, offloading comes first. False when nothing is left."""
        can_offload = not self.cpu_offload and self.device.startswith("cuda")
        if self._load_ran_out_of_memory and can_offload:
            self.cpu_offload = True
            self.unload()
            return True
        if self.max_seconds > MIN_SECONDS:
            self.max_seconds = max(MIN_SECONDS, self.max_seconds / 2)
            return True
        if can_offload:
            self.cpu_offload = True
            self.unload()
            return True
        return False

    # --- labelling ---

    def label(self, path: Path) -> Labels:
        """Labels for one audio file (the first `max_seconds`), from one greedy inference.

        Raises AudioError for a file that cannot be used, torch.OutOfMemoryError when the GPU
        runs out (call reduce_memory() and retry), and what load() raises.
        """
        path = Path(path)
        audio = load_audio(path, sample_rate=SAMPLE_RATE, max_seconds=self.max_seconds)
        notes = []
        duration = probe_audio(path).duration
        if duration > self.max_seconds + 0.5:
            notes.append(f"only the first {self.max_seconds:g} s of {duration:.0f} s were heard")
        self.load()
        text, finished = self.generate(audio.mean(axis=0))
        labels = parse_caption_output(text) if self.kind == "captioner" else parse_transcription_output(text)
        if not finished:
            notes.append(f"the model stopped at max_new_tokens={self.max_new_tokens}; the end may be cut off")
        labels.source = self.name
        labels.notes = notes + labels.notes
        return labels

    def prepare_inputs(self, mono) -> dict:
        """Token ids and audio features for one mono 16 kHz waveform, from the checkpoint's chat
        template, tokenizer and feature extractor (load() first)."""
        conversation = [
            {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
            {"role": "user", "content": [{"type": "text", "text": self.info.prompt + "\n"}, {"type": "audio"}]},
        ]
        text = self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        return self.processor(text=text, audio=[mono], sampling_rate=SAMPLE_RATE, return_tensors="pt")

    def generate(self, mono) -> tuple[str, bool]:
        """(the decoded answer, whether it ended with an end token rather than at max_new_tokens)."""
        inputs = self.prepare_inputs(mono).to(self.model.device)
        inputs["input_features"] = inputs["input_features"].to(self.model.dtype)
        prompt_length = inputs["input_ids"].shape[1]
        end_tokens = self._end_tokens()
        pad = self.processor.tokenizer.pad_token_id
        settings = {"max_new_tokens": self.max_new_tokens, "do_sample": False, "num_beams": 1,
                    "eos_token_id": end_tokens, "pad_token_id": end_tokens[-1] if pad is None else pad}
        try:
            with torch.inference_mode():
                output = self.model.generate(**inputs, **settings)
        except torch.OutOfMemoryError:
            del inputs
            _free_memory()
            raise
        new_tokens = output[0, prompt_length:].cpu()
        finished = len(new_tokens) < self.max_new_tokens or (len(new_tokens) > 0 and int(new_tokens[-1]) in end_tokens)
        text = self.processor.batch_decode(new_tokens[None], skip_special_tokens=True,
                                           clean_up_tokenization_spaces=False)[0]
        return text, finished

    def _end_tokens(self) -> list[int]:
        """The generation config's end tokens plus <|im_end|> and <|endoftext|> (the transcriber's
        generation_config.json lists both; a checkpoint without one must still stop)."""
        configured = self.model.generation_config.eos_token_id
        if isinstance(configured, (list, tuple)):
            ids = list(configured)
        else:
            ids = [] if configured is None else [configured]
        tokenizer = self.processor.tokenizer
        for token in ("<|im_end|>", "<|endoftext|>"):
            token_id = tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id not in ids:
                ids.append(token_id)
        return ids


# --- helpers ---


def _flash_attn_imports() -> bool:
    if importlib.util.find_spec("flash_attn") is None:
        return False
    try:
        import flash_attn  # noqa: F401
    except Exception:  # a broken build fails in many ways; any of them means "not usable"
        return False
    return True


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
