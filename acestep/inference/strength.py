"""Run a transformer's adapter at a chosen strength for a while, then put everything back exactly.

Strength 0 switches the adapter off (PEFT `enable_adapters(False)` per layer; LyCORIS: the module's
original forward), so it equals the base model bit for bit, also for DoRA, whose learned magnitude
would still act at scale 0. Other strengths multiply each PEFT layer's `scaling` (what official
ACE-Step's strength slider does) or each LyCORIS module's `multiplier`.

Why not diffusers' `attention_kwargs={"scale": s}`: it does scale PEFT layers of
`AceStepTransformer1DModel`, but it undoes the scaling by division (0.75 * 0.1 / 0.1 is
0.7500000000000001, so a training adapter would drift), at s = 0 it resets every scale to
alpha / r instead of restoring it, it keeps DoRA's magnitude at 0, and it does not reach LyCORIS.
Here the original values are saved and assigned back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import nn

from acestep.errors import PreviewError


@dataclass
class _Saved:
    """What a strength change touches, to be assigned back."""

    peft_disabled: dict = field(default_factory=dict)  # layer -> disable_adapters
    peft_scaling: dict = field(default_factory=dict)  # layer -> copy of its scaling dict
    peft_cast: dict = field(default_factory=dict)  # layer -> cast_input_dtype_enabled
    requires_grad: dict = field(default_factory=dict)  # parameter -> requires_grad
    lycoris_forward: dict = field(default_factory=dict)  # original module -> its forward attribute
    lycoris_multiplier: dict = field(default_factory=dict)  # LyCORIS module -> multiplier


def peft_layers(transformer: nn.Module) -> list:
    """The PEFT tuner layers inside the transformer (LoRA and DoRA layers)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return []
    return [module for module in transformer.modules() if isinstance(module, BaseTunerLayer)]


def lycoris_wrapped(transformer: nn.Module) -> list[nn.Module]:
    """Modules of the transformer whose forward a LyCORIS network (LoKr) has replaced: LyCORIS keeps
    its modules outside the model and leaves `_lycoris_wrappers` on each module it wraps."""
    return [module for module in transformer.modules() if module.__dict__.get("_lycoris_wrappers")]


def has_adapter(transformer: nn.Module) -> bool:
    return bool(peft_layers(transformer) or lycoris_wrapped(transformer))


def _snapshot(layers: list, wrapped: list[nn.Module]) -> _Saved:
    saved = _Saved()
    for layer in layers:
        if getattr(layer, "merged", False):
            raise PreviewError("the adapter is merged into the base weights; previews at a strength need it "
                               "unmerged (call unmerge_adapter() first)")
        saved.peft_disabled[layer] = bool(layer.disable_adapters)
        saved.peft_cast[layer] = layer.cast_input_dtype_enabled
        if isinstance(getattr(layer, "scaling", None), dict):
            saved.peft_scaling[layer] = dict(layer.scaling)
        for param in layer.parameters():
            saved.requires_grad[param] = param.requires_grad
    for module in wrapped:
        saved.lycoris_forward[module] = module.__dict__["forward"]
        for wrapper in module.__dict__["_lycoris_wrappers"]:
            saved.lycoris_multiplier[wrapper] = wrapper.multiplier
    return saved


def _restore(saved: _Saved) -> None:
    for layer, disabled in saved.peft_disabled.items():
        if bool(layer.disable_adapters) != disabled:
            layer.enable_adapters(not disabled)
    for layer, scaling in saved.peft_scaling.items():
        layer.scaling.clear()
        layer.scaling.update(scaling)
    for layer, cast in saved.peft_cast.items():
        layer.cast_input_dtype_enabled = cast
    for param, flag in saved.requires_grad.items():
        param.requires_grad_(flag)
    for module, forward in saved.lycoris_forward.items():
        module.forward = forward
    for wrapper, multiplier in saved.lycoris_multiplier.items():
        wrapper.multiplier = multiplier


@contextmanager
def adapter_strength(transformer: nn.Module, strength: float) -> Iterator[None]:
    """Within the block the transformer's adapters act at `strength` (0: off, 1: as trained);
    afterwards every flag, scale and multiplier holds its value from before, exactly, even if the
    block raised. PEFT layers cast their input to the adapter's dtype within the block (training
    under autocast turns that off, `Adapter.skip_input_casts`). Raises PreviewError when the
    transformer has no adapter, the strength is negative, or a PEFT adapter is merged into the
    weights."""
    if not strength >= 0:
        raise PreviewError(f"an adapter strength must be 0 or more, got {strength!r}")
    layers, wrapped = peft_layers(transformer), lycoris_wrapped(transformer)
    if not layers and not wrapped:
        raise PreviewError("an adapter strength was asked for, but the transformer has no adapter; load one first")
    saved = _snapshot(layers, wrapped)
    try:
        for layer in layers:  # sampling runs without autocast: fp32 adapters need their input cast
            layer.cast_input_dtype_enabled = True
        if strength == 0:
            for layer in layers:
                layer.enable_adapters(False)
            for module in wrapped:
                module.forward = module.__dict__["_lycoris_original_forward"]
        elif strength != 1:
            for layer, scaling in saved.peft_scaling.items():
                for name in layer.active_adapters:
                    if name in scaling:
                        layer.scaling[name] = scaling[name] * strength
            for wrapper, multiplier in saved.lycoris_multiplier.items():
                wrapper.multiplier = multiplier * strength
        yield
    finally:
        _restore(saved)
