"""Load an ACE-Step 1.5 checkpoint into diffusers' module classes.

`load_acestep` accepts the official layout (`config.json` + `model.safetensors` [sharded for XL]
+ `silence_latent.pt`) and a folder already in diffusers' layout (`model_index.json` with
`transformer/`, `condition_encoder/`, ...). Either way every tensor goes through the strict
checks of `acestep.models.weights`: a missing, unexpected or mis-shaped key is an error that
names the file and the keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AceStepTransformer1DModel
from diffusers.pipelines.ace_step.modeling_ace_step import (
    AceStepAudioTokenDetokenizer,
    AceStepAudioTokenizer,
    AceStepConditionEncoder,
)
from torch import nn

from acestep.errors import CheckpointError
from acestep.models import convert
from acestep.models.attention import plan_attention, use_attention_processor
from acestep.models.checkpoints import DIT, is_diffusers_layout, resolve_model_path
from acestep.models.config import AceStepModelConfig, read_dit_config
from acestep.models.layout import keep_sequence_major
from acestep.models.norms import use_fused_rms_norm
from acestep.models.timbre import TimbreEncoder
from acestep.models.weights import (
    SafetensorsIndex,
    check_state_dict,
    empty_weights,
    fill_module,
    header_shapes,
    load_silence_latent,
    weight_files,
)

ALL_COMPONENTS = convert.COMPONENTS
# diffusers' pipeline folder names for our components.
DIFFUSERS_SUBFOLDERS = {
    convert.TRANSFORMER: "transformer",
    convert.CONDITION_ENCODER: "condition_encoder",
    convert.AUDIO_TOKENIZER: "audio_tokenizer",
    convert.AUDIO_DETOKENIZER: "audio_token_detokenizer",
}
_SILENCE_BUFFER = "silence_latent"  # a persistent buffer of diffusers' condition encoder


@dataclass
class AceStepBundle:
    """The modules of one ACE-Step 1.5 checkpoint, frozen and in eval mode.

    `null_condition_emb` is `[1, 1, encoder_hidden_size]` (the learned CFG null condition);
    `silence_latent` is `[1, frames, 64]`, time-major, fp32. Components not asked for are None.
    """

    config: AceStepModelConfig
    path: Path
    null_condition_emb: torch.Tensor
    silence_latent: torch.Tensor
    transformer: AceStepTransformer1DModel | None = None
    condition_encoder: AceStepConditionEncoder | None = None
    audio_tokenizer: AceStepAudioTokenizer | None = None
    audio_detokenizer: AceStepAudioTokenDetokenizer | None = None

    @property
    def variant(self) -> str:
        return self.config.variant

    def tokenize(self, latents: torch.Tensor, attention_mask: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """25 Hz latents `[B, T, 64]` -> 5 Hz `(quantized [B, T', H], indices [B, T', 1], mask [B, T'])`.

        As the official model does: T is padded to a multiple of the pool window with
        silence-latent frames (mask 0 there), and the mask is max-pooled per window.
        """
        tokenizer = _require(self.audio_tokenizer, "audio_tokenizer")
        batch, frames, channels = latents.shape
        if attention_mask is None:
            attention_mask = torch.ones(batch, frames, device=latents.device)
        window = int(self.config.raw["pool_window_size"])
        pad = (-frames) % window
        if pad:
            filler = self.silence_latent[:, :pad].to(device=latents.device, dtype=latents.dtype)
            latents = torch.cat([latents, filler.expand(batch, -1, -1)], dim=1)
            attention_mask = F.pad(attention_mask, (0, pad), value=0)
        patches = latents.reshape(batch, -1, window, channels)
        pooled_mask = attention_mask.to(latents.dtype).reshape(batch, -1, window).amax(dim=-1)
        quantized, indices = tokenizer(patches)
        return quantized, indices, pooled_mask

    def detokenize(self, quantized: torch.Tensor) -> torch.Tensor:
        """5 Hz quantized codes `[B, T', H]` -> 25 Hz acoustic hints `[B, T' * window, 64]`."""
        return _require(self.audio_detokenizer, "audio_detokenizer")(quantized)


def _require(module: nn.Module | None, name: str) -> nn.Module:
    if module is None:
        raise CheckpointError(f"The {name} was not loaded; pass it in `components` to load_acestep.")
    return module


def build_component(config: AceStepModelConfig, component: str) -> nn.Module:
    """Build one module from the config with parameters on the meta device, its attention layers
    on `AceStepAttentionProcessor` (unplanned: `plan_attention` plans it for a device) and its
    RMSNorms on PyTorch's fused kernel (`acestep.models.norms`)."""
    return use_fused_rms_norm(use_attention_processor(_build(config, component)))


def _build(config: AceStepModelConfig, component: str) -> nn.Module:
    with empty_weights():
        if component == convert.TRANSFORMER:  # with its residual stream kept [B, T, D]-contiguous
            return keep_sequence_major(AceStepTransformer1DModel(**config.transformer_kwargs()))
        if component == convert.AUDIO_TOKENIZER:
            return AceStepAudioTokenizer(**config.audio_tokenizer_kwargs())
        if component == convert.AUDIO_DETOKENIZER:
            return AceStepAudioTokenDetokenizer(**config.audio_detokenizer_kwargs())
        if component == convert.CONDITION_ENCODER:
            kwargs = config.condition_encoder_kwargs()
            encoder = AceStepConditionEncoder(**kwargs)
            timbre_keys = ("hidden_size", "intermediate_size", "timbre_hidden_dim", "num_timbre_encoder_hidden_layers",
                           "num_attention_heads", "num_key_value_heads", "head_dim", "rope_theta", "attention_bias",
                           "attention_dropout", "rms_norm_eps", "sliding_window", "layer_types")
            timbre = TimbreEncoder(**{k: kwargs[k] for k in timbre_keys})
            timbre.prepend_special_token = config.is_xl
            encoder.timbre_encoder = timbre
            return encoder
    raise ValueError(f"unknown component {component!r}; expected one of {ALL_COMPONENTS}")


def load_acestep(path: str | Path, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
                 components: tuple[str, ...] = ALL_COMPONENTS, checkpoints_dir: Path | None = None,
                 download: bool = False) -> AceStepBundle:
    """Load an ACE-Step 1.5 DiT checkpoint (any variant, 2B or XL) as an `AceStepBundle`.

    `path` is a folder, a folder name in the checkpoints directory, or an HF id. Floating
    weights are cast to `dtype` and placed on `device`; `components` limits what is built (the
    null embedding and the silence latent are always loaded). The attention of every module is
    planned for `device` and `dtype` (`acestep.models.attention`); a caller that computes in
    another dtype (autocast) plans it again. Raises `CheckpointError` (or its subclass
    `CheckpointNotFoundError`) naming the file and the problem.
    """
    unknown = set(components) - set(ALL_COMPONENTS)
    if unknown:
        raise ValueError(f"unknown component(s) {sorted(unknown)}; choose from {ALL_COMPONENTS}")
    folder = resolve_model_path(path, DIT, checkpoints_dir=checkpoints_dir, download=download)
    config = read_dit_config(folder)
    if is_diffusers_layout(folder):
        modules, null_emb, silence = _load_diffusers_layout(folder, config, dtype, device, components)
    else:
        modules, null_emb, silence = _load_original_layout(folder, config, dtype, device, components)
    for module in modules.values():
        plan_attention(module, device, dtype)
    return AceStepBundle(config=config, path=folder, null_condition_emb=null_emb, silence_latent=silence, **modules)


def _load_original_layout(folder: Path, config: AceStepModelConfig, dtype: torch.dtype, device,
                          components: tuple[str, ...]):
    files = weight_files(folder, "model.safetensors")
    index = SafetensorsIndex(files)
    source = files[0] if len(files) == 1 else folder / "model.safetensors.index.json"
    routed: dict[str, dict[str, str]] = {name: {} for name in ALL_COMPONENTS}  # component -> new key -> old key
    stray = []
    for key in index.keys():
        try:
            component, new_key = convert.original_key_to_diffusers(key)
        except convert.UnknownKeyError:
            stray.append(key)
            continue
        routed[component][new_key] = key
    if stray:
        raise CheckpointError(
            f"{source} holds key(s) outside the ACE-Step 1.5 model: {sorted(stray)[:8]}"
            + (f" and {len(stray) - 8} more" if len(stray) > 8 else "") + ". It is not an official checkpoint."
        )
    if convert.NULL_CONDITION_KEY not in routed[convert.CONDITION_ENCODER]:
        raise CheckpointError(
            f"{source} has no 'null_condition_emb': CFG dropout needs the learned null condition, and "
            "every official ACE-Step 1.5 checkpoint has one. The file is incomplete or of another model."
        )
    modules = {}
    for component in ALL_COMPONENTS:
        # Every component is checked against the header, loaded or not, so a damaged checkpoint
        # is caught whatever the caller asks for.
        module = build_component(config, component)
        key_map = routed[component]
        skip = (_SILENCE_BUFFER,) if component == convert.CONDITION_ENCODER else ()
        shapes = header_shapes(index, key_map.values())
        check_state_dict(module, {new: shapes[old] for new, old in key_map.items()}, str(source), skip=skip)
        if component not in components:
            continue
        loaded = index.load(key_map.values(), dtype, device)
        tensors = {new: loaded[old] for new, old in key_map.items()}
        if component == convert.CONDITION_ENCODER:
            tensors[_SILENCE_BUFFER] = module.silence_latent  # replaced below by the real one
        modules[component] = fill_module(module, tensors, device)
    null_emb = _null_condition(modules, index, dtype, device)
    silence = load_silence_latent(folder, int(config.raw["audio_acoustic_hidden_dim"])).to(device)
    if convert.CONDITION_ENCODER in modules:
        modules[convert.CONDITION_ENCODER].silence_latent = silence  # any length, not just 15000
    return modules, null_emb, silence


def _null_condition(modules: dict[str, nn.Module], index: SafetensorsIndex, dtype, device) -> torch.Tensor:
    if convert.CONDITION_ENCODER in modules:
        return modules[convert.CONDITION_ENCODER].null_condition_emb
    return index.load([convert.NULL_CONDITION_KEY], dtype, device)[convert.NULL_CONDITION_KEY]


def _load_diffusers_layout(folder: Path, config: AceStepModelConfig, dtype: torch.dtype, device,
                           components: tuple[str, ...]):
    modules = {}
    null_emb = silence = None
    for component in ALL_COMPONENTS:
        is_encoder = component == convert.CONDITION_ENCODER
        if component not in components and not is_encoder:
            continue
        files = weight_files(folder / DIFFUSERS_SUBFOLDERS[component], "diffusion_pytorch_model.safetensors")
        index = SafetensorsIndex(files)
        module = build_component(config, component)
        skip = (_SILENCE_BUFFER,) if is_encoder else ()
        check_state_dict(module, header_shapes(index, index.keys()), str(files[0]), skip=skip)
        keys = [k for k in index.keys() if k not in skip]
        if is_encoder:
            silence = index.load([_SILENCE_BUFFER], None, device)[_SILENCE_BUFFER].float()
            if component not in components:
                null_emb = index.load([convert.NULL_CONDITION_KEY], dtype, device)[convert.NULL_CONDITION_KEY]
                continue
        tensors = index.load(keys, dtype, device)
        if is_encoder:
            tensors[_SILENCE_BUFFER] = module.silence_latent
        modules[component] = fill_module(module, tensors, device)
        if is_encoder:
            module.silence_latent = silence
            null_emb = module.null_condition_emb
    return modules, null_emb, silence


def encoder_digest(path: str | Path, checkpoints_dir: Path | None = None) -> str:
    """Short hash of the condition encoder's identifying weights (the null embedding and the
    text projector), read without loading the model. Two checkpoints with one architecture but
    different encoders (turbo vs base) give different digests; both layouts give the same one."""
    import hashlib

    folder = resolve_model_path(path, DIT, checkpoints_dir=checkpoints_dir)
    if is_diffusers_layout(folder):
        index = SafetensorsIndex(weight_files(folder / "condition_encoder", "diffusion_pytorch_model.safetensors"))
        keys = [convert.NULL_CONDITION_KEY, "text_projector.weight"]
    else:
        index = SafetensorsIndex(weight_files(folder, "model.safetensors"))
        keys = [convert.NULL_CONDITION_KEY, "encoder.text_projector.weight"]
    absent = [key for key in keys if key not in index.location]
    if absent:
        raise CheckpointError(f"{folder} lacks {absent}; it is not a complete ACE-Step checkpoint.")
    loaded = index.load(keys, torch.float32, "cpu")
    digest = hashlib.sha256()
    for key in keys:  # same order and bytes in both layouts
        digest.update(loaded[key].contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
