"""LyCORIS (LoKr) adapters: key naming between our transformer and the files other tools read.

LyCORIS names a module `lycoris_<module path with "." -> "_">`. Inside this trainer the path is
diffusers' (`layers_0_self_attn_to_q`); exported files use the official decoder names
(`layers_0_self_attn_q_proj`), which ComfyUI's ACE-Step 1.5 key map reads.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from acestep.models.convert import rename_module_path_to_original

PREFIX = "lycoris_"


def _lycoris_name(module_path: str) -> str:
    return PREFIX + module_path.replace(".", "_")


def lycoris_names(transformer: nn.Module) -> dict[str, str]:
    """Every name a LyCORIS file may give a Linear of the transformer (official or diffusers
    naming) -> the name LyCORIS uses on this transformer (diffusers naming)."""
    names = {}
    for path, module in transformer.named_modules():
        if isinstance(module, nn.Linear):
            ours = _lycoris_name(path)
            names[ours] = ours
            names[_lycoris_name(rename_module_path_to_original(path))] = ours
    return names


def to_official_names(state: dict[str, torch.Tensor], transformer: nn.Module) -> dict[str, torch.Tensor]:
    """Our LoKr tensors (diffusers names) with the official module names, for export."""
    official = {ours: _lycoris_name(rename_module_path_to_original(path))
                for path, module in transformer.named_modules() if isinstance(module, nn.Linear)
                for ours in [_lycoris_name(path)]}
    renamed = {}
    for key, tensor in state.items():
        module, _, rest = key.partition(".")
        renamed[f"{official.get(module, module)}.{rest}"] = tensor
    return renamed


def apply_lokr(transformer: nn.Module, state: dict[str, torch.Tensor], source: Path) -> nn.Module:
    """Apply LyCORIS weights (either naming) to `transformer`; the network is kept as
    `transformer._acestep_lycoris` so its strength can be set. Raises `AdapterError`."""
    from lycoris import create_lycoris_from_weights

    from acestep.export.lora import AdapterError

    names = lycoris_names(transformer)
    renamed = {}
    for key, tensor in state.items():
        module, _, rest = key.partition(".")
        if module not in names:
            raise AdapterError(f"{source} adapts {module!r}, which the model does not have: the adapter was trained "
                               "for another model.")
        renamed[f"{names[module]}.{rest}"] = tensor
    logging.getLogger("LyCORIS").setLevel(logging.WARNING)
    try:
        network, _ = create_lycoris_from_weights(1.0, None, transformer, weights_sd=renamed)
        network.apply_to()
        parameter = next(transformer.parameters())
        network.to(device=parameter.device, dtype=torch.float32)
        result = network.load_state_dict(renamed, strict=False)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise AdapterError(f"{source} does not fit the model: {exc}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise AdapterError(f"{source} did not load cleanly: missing {result.missing_keys[:4]}, "
                           f"unexpected {result.unexpected_keys[:4]}.")
    network.requires_grad_(False)
    attach_network(transformer, network)
    return transformer


NETWORK_ATTRIBUTE = "_acestep_lycoris"


def attach_network(transformer: nn.Module, network: nn.Module) -> None:
    """Remember the LyCORIS network on the transformer without registering it as a submodule
    (which would put its weights into the transformer's state dict)."""
    object.__setattr__(transformer, NETWORK_ATTRIBUTE, network)


def attached_network(transformer: nn.Module) -> nn.Module | None:
    return transformer.__dict__.get(NETWORK_ATTRIBUTE)
