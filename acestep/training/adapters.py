"""Adapters on the ACE-Step transformer: PEFT LoRA and DoRA, LyCORIS LoKr.

Targets are chosen by module name in diffusers' naming (`layers.N.self_attn.to_q`); explicit
module lists may also use the official names (`q_proj`, `o_proj`), which are translated. Adapter
weights are kept in fp32 whatever the dtype of the frozen base.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from acestep.errors import TrainingError
from acestep.models.convert import rename_module_path_to_diffusers, rename_module_path_to_original
from acestep.training.run_layout import LOKR_CONFIG, LOKR_WEIGHTS, PEFT_WEIGHTS

ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
MLP_PROJECTIONS = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
TARGET_CHOICES = ("self_attention", "cross_attention", "attention")
ADAPTER_TYPES = ("lora", "dora", "lokr")


def target_module_names(transformer: nn.Module, targets: str = "attention", mlp: bool = False,
                        modules: list[str] | None = None) -> list[str]:
    """Full names of the Linear modules to adapt.

    `targets` picks self-attention, cross-attention or both (q, k, v, out); `mlp` adds gate, up
    and down projections; a non-empty `modules` list replaces both (names or name suffixes, in
    diffusers or official naming). Raises `TrainingError` when nothing matches.
    """
    linears = [name for name, module in transformer.named_modules() if isinstance(module, nn.Linear)]
    if modules:
        wanted = [rename_module_path_to_diffusers(m) for m in modules]
        chosen = [n for n in linears if any(n == w or n.endswith("." + w) for w in wanted)]
    else:
        if targets not in TARGET_CHOICES:
            raise TrainingError(f"adapter.targets must be one of {', '.join(TARGET_CHOICES)}, got {targets!r}")
        kinds = {"self_attention": ("self_attn",), "cross_attention": ("cross_attn",),
                 "attention": ("self_attn", "cross_attn")}[targets]
        suffixes = [f"{kind}.{proj}" for kind in kinds for proj in ATTENTION_PROJECTIONS]
        if mlp:
            suffixes += list(MLP_PROJECTIONS)
        chosen = [n for n in linears if n.startswith("layers.") and any(n.endswith("." + s) for s in suffixes)]
    if not chosen:
        raise TrainingError(f"No module of the transformer matches the adapter targets ({modules or targets}).")
    return chosen


@dataclass
class Adapter:
    """An adapter attached to a transformer. `network` is the LyCORIS network for LoKr (None for
    PEFT adapters, which live inside the transformer's modules)."""

    kind: str
    transformer: nn.Module
    rank: int
    alpha: float
    modules: list[str]
    network: nn.Module | None = None

    def parameters(self) -> list[nn.Parameter]:
        if self.network is not None:
            return [p for p in self.network.parameters() if p.requires_grad]
        return [p for n, p in self.transformer.named_parameters() if p.requires_grad and "lora_" in n]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable weights only (what checkpoints store), detached, in diffusers naming."""
        if self.network is not None:  # parameters and buffers themselves (LyCORIS' state_dict() makes copies)
            tensors = dict(self.network.named_parameters())
            tensors.update(self.network.named_buffers())
            return {k: v.detach() for k, v in tensors.items()}
        return {n: p.detach() for n, p in self.transformer.named_parameters() if "lora_" in n}

    def skip_input_casts(self) -> None:
        """For training under autocast: PEFT casts each adapted layer's input to the adapter's fp32,
        and autocast casts it straight back to bf16/fp16 for the matrix product. Skipping that round
        trip (exact, so LoRA without dropout computes the same bits) spares each adapted layer two
        copies of its input per pass, and q, k and v keep their shared input once for the backward
        pass instead of a copy each. The flag stays off for the run; previews, which run without
        autocast, turn it on while they sample (`acestep.inference.strength`). LoKr does not cast."""
        from acestep.inference.strength import peft_layers

        for layer in peft_layers(self.transformer):
            layer.cast_input_dtype_enabled = False

    def load_state_dict(self, state: dict[str, torch.Tensor], source: str = "Adapter state") -> None:
        """Restore weights saved by `state_dict`; every key and shape must match (no silent partial
        load). `source` names them in the error."""
        current = self.state_dict()
        missing, unexpected = current.keys() - state.keys(), state.keys() - current.keys()
        if missing or unexpected:
            raise TrainingError(f"{source} does not match the adapter: missing {sorted(missing)[:4]}, "
                                f"unexpected {sorted(unexpected)[:4]}.")
        for key, tensor in current.items():
            if state[key].shape != tensor.shape:
                raise TrainingError(f"{source} does not match the adapter: {key} is {list(state[key].shape)}, the "
                                    f"adapter's {list(tensor.shape)} (another rank?).")
        with torch.no_grad():
            for key, tensor in current.items():
                tensor.copy_(state[key].to(tensor.device, tensor.dtype))


def add_adapter(transformer: nn.Module, kind: str = "lora", rank: int = 64, alpha: float = 128.0,
                dropout: float = 0.0, targets: str = "attention", mlp: bool = False,
                modules: list[str] | None = None, lokr_factor: int = -1) -> Adapter:
    """Attach a fresh adapter (base weights frozen) and return it."""
    if kind not in ADAPTER_TYPES:
        raise TrainingError(f"adapter.type must be one of {', '.join(ADAPTER_TYPES)}, got {kind!r}")
    transformer.requires_grad_(False)
    names = target_module_names(transformer, targets, mlp, modules)
    if kind == "lokr":
        network = _add_lokr(transformer, names, rank, alpha, lokr_factor)
        return Adapter(kind, transformer, rank, alpha, names, network)
    from peft import LoraConfig

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names,
                        use_dora=(kind == "dora"), init_lora_weights=True)
    transformer.add_adapter(config, adapter_name="default")
    for name, param in transformer.named_parameters():
        if "lora_" in name:
            param.data = param.data.float()
            param.requires_grad_(True)
    return Adapter(kind, transformer, rank, alpha, names)


def _add_lokr(transformer: nn.Module, names: list[str], rank: int, alpha: float, factor: int) -> nn.Module:
    try:
        from lycoris import LycorisNetwork, create_lycoris
    except ImportError as exc:
        raise TrainingError("LoKr needs the lycoris-lora package: env/bin/python -m pip install lycoris-lora") from exc
    logging.getLogger("LyCORIS").setLevel(logging.WARNING)  # it logs every module at INFO
    # The preset is class-level state in LyCORIS: set it right before creating the network.
    LycorisNetwork.apply_preset({"target_module": [], "target_name": names})
    # LyCORIS rebuilds each LoKr weight in this mode and applies no dropout there (it prints a warning
    # per module instead): dropout 0 trains the same, and the run says so once (training/loop.py)
    network = create_lycoris(transformer, 1.0, linear_dim=rank, linear_alpha=alpha, algo="lokr",
                             factor=factor, dropout=0.0)
    network.apply_to()
    from acestep.export.lokr import attach_network

    attach_network(transformer, network)  # so previews and exports can find and scale it
    device = next(transformer.parameters()).device
    network.to(device=device, dtype=torch.float32)
    network.requires_grad_(True)
    return network


def save_adapter(adapter: Adapter, folder: Path, metadata: dict | None = None) -> Path:
    """Write the adapter into `folder` (created): LoRA/DoRA as a PEFT folder with the official
    module names (`base_model.model.layers.N.self_attn.q_proj.lora_A.weight`), which official
    ACE-Step inference loads with `PeftModel.from_pretrained` on the decoder; LoKr as LyCORIS
    weights plus a small JSON config. `metadata` goes into the files (strings)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    if adapter.network is not None:
        native = adapter.network.state_dict()  # LyCORIS' own key layout, what its loaders expect
        save_file({k: v.float().contiguous().cpu() for k, v in native.items()}, folder / LOKR_WEIGHTS, metadata=meta)
        (folder / LOKR_CONFIG).write_text(json.dumps({
            "algo": "lokr", "rank": adapter.rank, "alpha": adapter.alpha, "modules": adapter.modules,
            **(metadata or {})}, indent=2, default=str) + "\n", encoding="utf-8")
        return folder
    state = {saved_lora_name(name): tensor.float().contiguous().cpu() for name, tensor in adapter.state_dict().items()}
    save_file(state, folder / PEFT_WEIGHTS, metadata={"format": "pt", **meta})
    targets = official_target_modules(adapter)
    config = {
        "peft_type": "LORA", "task_type": "FEATURE_EXTRACTION", "r": adapter.rank, "lora_alpha": adapter.alpha,
        "lora_dropout": 0.0, "target_modules": targets, "bias": "none", "use_dora": adapter.kind == "dora",
        "use_rslora": False, "rank_pattern": {}, "alpha_pattern": {}, "base_model_name_or_path": None,
        "inference_mode": True, "init_lora_weights": True, "fan_in_fan_out": False, "modules_to_save": None,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    if metadata:
        (folder / "training_metadata.json").write_text(json.dumps(metadata, indent=2, default=str) + "\n",
                                                       encoding="utf-8")
    return folder


def official_target_modules(adapter: Adapter) -> list[str]:
    """`target_modules` for the official PEFT config: the shortest name suffixes that select exactly
    the adapted modules (["q_proj", "k_proj", ...] as the official trainer writes, or
    ["self_attn.q_proj", ...]), else the full module names."""
    linears = {rename_module_path_to_original(name.removesuffix(".base_layer"))  # PEFT wraps the adapted Linear
               for name, module in adapter.transformer.named_modules()
               if isinstance(module, nn.Linear) and name.startswith("layers.") and ".lora_" not in name}
    chosen = {rename_module_path_to_original(m) for m in adapter.modules}
    for depth in (1, 2):
        suffixes = {".".join(name.split(".")[-depth:]) for name in chosen}
        selected = {name for name in linears if ".".join(name.split(".")[-depth:]) in suffixes}
        if selected == chosen:
            return sorted(suffixes)
    return sorted(chosen)


def saved_lora_name(name: str) -> str:
    """The key `save_adapter` gives a LoRA/DoRA weight of `Adapter.state_dict()`: the official module
    path under `base_model.model.`, PEFT's adapter name dropped (`layers.0.self_attn.to_q.lora_A.
    default.weight` -> `base_model.model.layers.0.self_attn.q_proj.lora_A.weight`)."""
    module, _, suffix = name.partition(".lora_")
    suffix = "lora_" + suffix.replace(".default", "")
    if suffix == "lora_magnitude_vector.weight":
        suffix = "lora_magnitude_vector"  # PEFT saves the DoRA magnitude without ".weight"
    return f"base_model.model.{rename_module_path_to_original(module)}.{suffix}"


def load_saved_adapter(adapter: Adapter, folder: Path) -> None:
    """Load the weights `save_adapter` wrote into `folder` back into `adapter` (of the same kind
    and shape), bit for bit: they are fp32 as trained, so a checkpoint's adapter folder doubles as
    its copy of the weights. Raises TrainingError naming the file when it is unreadable or does
    not match the adapter."""
    if adapter.network is not None:
        load_lokr_weights(adapter, folder)
        return
    path = Path(folder) / PEFT_WEIGHTS
    saved = _read_weights(path)
    names = {saved_lora_name(name): name for name in adapter.state_dict()}
    missing, unexpected = names.keys() - saved.keys(), saved.keys() - names.keys()
    if missing or unexpected:
        raise TrainingError(f"{path} does not match the adapter: missing {sorted(missing)[:4]}, unexpected "
                            f"{sorted(unexpected)[:4]}.")
    adapter.load_state_dict({names[key]: tensor for key, tensor in saved.items()}, str(path))


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (OSError, SafetensorError) as exc:
        raise TrainingError(f"{path} cannot be read ({exc}).") from exc


def load_lokr_weights(adapter: Adapter, folder: Path) -> None:
    """Load LoKr weights written by `save_adapter` into an adapter of the same shape."""
    path = Path(folder) / LOKR_WEIGHTS
    try:
        result = adapter.network.load_state_dict(_read_weights(path), strict=True)
    except RuntimeError as exc:  # strict loading raises for missing, unexpected or misshapen weights
        raise TrainingError(f"{path} does not match the LoKr adapter: {exc}") from exc
    if getattr(result, "missing_keys", None) or getattr(result, "unexpected_keys", None):
        raise TrainingError(f"{path} does not match the LoKr adapter: {result}")
