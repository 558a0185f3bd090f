"""Merge an adapter into its base checkpoint: a complete checkpoint folder in the official layout.

The weights are streamed one tensor at a time from the base `model.safetensors` to the new file(s):
the tensors an adapter touches get W + s·ΔW (LoRA, LoKr) or the DoRA update, every other tensor is
copied. Peak memory is about one tensor plus the adapter, not the model twice.

    out/                      (this app and official ACE-Step load it like any checkpoint)
      config.json             the base's
      model.safetensors       merged (or model-0000N-of-0000M.safetensors + index), bf16 by default
      silence_latent.pt       the base's
      merge_info.json         base, adapter, strength, date
    vae/, Qwen3-Embedding-0.6B/   beside it, copied or linked when not already there
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import struct
import time
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from acestep.export.lora import AdapterError, LoraWeights, _read_peft_folder, read_safetensors
from acestep.files import folder_bytes, free_space, replaced_folder, size_text
from acestep.models import convert
from acestep.training.run_layout import PEFT_CONFIG, PEFT_WEIGHTS

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_SAFETENSORS_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.float64: "F64",
                       torch.int64: "I64", torch.int32: "I32", torch.bool: "BOOL", torch.uint8: "U8"}
SHARED_FOLDERS = ("vae", "Qwen3-Embedding-0.6B")
BASE_FILES = ("config.json", "silence_latent.pt", "silence_latent.safetensors")  # copied from the base as they are


class StreamingSafetensorsWriter:
    """Writes a safetensors file tensor by tensor: the header (names, dtypes, shapes, offsets) is
    written first from the plan, then each tensor's bytes in the planned order."""

    def __init__(self, path: Path, plan: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict[str, str]):
        header, offset = {"__metadata__": metadata}, 0
        for key, dtype, shape in plan:
            size = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
            header[key] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                           "data_offsets": [offset, offset + size]}
            offset += size
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)
        self.plan, self.position = plan, 0
        self.stream = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.stream.write(struct.pack("<Q", len(encoded)))
        self.stream.write(encoded)

    def write(self, key: str, tensor: torch.Tensor) -> None:
        expected_key, dtype, shape = self.plan[self.position]
        if key != expected_key or tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"tensor {key} {tensor.dtype} {tuple(tensor.shape)} does not follow the plan "
                             f"({expected_key} {dtype} {shape})")
        self.stream.write(tensor.contiguous().view(torch.uint8).numpy().tobytes())
        self.position += 1

    def close(self) -> None:
        if self.position != len(self.plan):
            self.stream.close()
            raise ValueError(f"only {self.position} of {len(self.plan)} tensors were written")
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self.stream.close()


class DeltaSource:
    """The weight change of every module an adapter touches, computed one module at a time."""

    def __init__(self, adapter: Path, strength: float):
        self.strength = strength
        adapter = Path(adapter)
        self.lora: LoraWeights | None = None
        self.lokr: dict[str, dict[str, torch.Tensor]] = {}
        if adapter.is_dir() and (adapter / PEFT_CONFIG).is_file():
            self.file = adapter / PEFT_WEIGHTS  # the file named when a tensor does not fit
            self.lora = _read_peft_folder(adapter)
            return
        if adapter.is_dir():
            files = sorted(adapter.glob("*.safetensors"))
            if len(files) != 1:
                raise AdapterError(f"{adapter} holds no single adapter file to merge.")
            adapter = files[0]
        self.file = adapter
        state, metadata = read_safetensors(adapter)
        if any(key.startswith("lycoris_") for key in state):
            self._group_lokr(state)
        else:
            from acestep.export.lora import _read_diffusers_metadata, lora_weights_from_state

            alpha, use_dora = _read_diffusers_metadata(metadata, adapter)
            self.lora = lora_weights_from_state(state, adapter, default_alpha=alpha, use_dora=use_dora)

    def _group_lokr(self, state: dict[str, torch.Tensor]) -> None:
        for key, tensor in state.items():
            module, _, rest = key.partition(".")
            self.lokr.setdefault(module, {})[rest] = tensor

    def modules(self) -> set[str]:
        """Diffusers paths of the modules this adapter changes (LoKr: resolved per key below)."""
        return set(self.lora.modules) if self.lora else set()

    def merged(self, module: str, weight: torch.Tensor) -> torch.Tensor | None:
        """The merged fp32 weight of `module` (diffusers path), or None if untouched. The shapes
        are checked before anything is written (`check_fits`, by `merge_adapter`)."""
        if self.lora is not None:
            return self._merged_lora(module, weight.float()) if module in self.lora.modules else None
        key = self._lokr_key(module)
        return None if key is None else weight.float() + self._lokr_delta(key, weight)

    def _lokr_key(self, module: str) -> str | None:
        """The LyCORIS name of `module` (diffusers or official naming) in this adapter, or None."""
        for name in (module, convert.rename_module_path_to_original(module)):
            key = "lycoris_" + name.replace(".", "_")
            if key in self.lokr:
                return key
        return None

    def check_fits(self, module: str, shape: tuple[int, ...]) -> None:
        """Raise AdapterError, naming the adapter file, the module and both shapes, when the change
        this adapter makes to `module` (diffusers path) does not fit its base weight of `shape`."""
        if self.lora is not None:
            if module not in self.lora.modules:
                return
            parts = {name.split(".")[0]: tuple(tensor.shape) for name, tensor in self.lora.modules[module].items()}
            fits = lora_fits(parts, shape)
        else:
            key = self._lokr_key(module)
            if key is None:
                return
            parts = {name.split(".")[0]: tuple(tensor.shape) for name, tensor in self.lokr[key].items()
                     if name.split(".")[0].startswith("lokr_")}
            fits = lokr_shape(parts) == tuple(shape)
        if not fits:
            held = ", ".join(f"{name} {list(part)}" for name, part in sorted(parts.items()))
            official = convert.rename_module_path_to_original(module)
            raise AdapterError(f"{self.file} does not fit the model: module {official} is {list(shape)} in the base, "
                               f"and the adapter holds {held} for it: it was trained for another model (give "
                               "--checkpoint with the one it was trained on).")

    def _merged_lora(self, module: str, weight: torch.Tensor) -> torch.Tensor:
        tensors = self.lora.modules[module]
        scale = self.strength * self.lora.alphas[module] / self.lora.rank(module)
        combined = weight + scale * (tensors["lora_B.weight"].float() @ tensors["lora_A.weight"].float())
        if "lora_magnitude_vector" not in tensors:
            return combined
        # DoRA, as PEFT merges it: rows rescaled to the learned magnitude.
        norm = combined.norm(p=2, dim=1, keepdim=True)
        magnitude = tensors["lora_magnitude_vector"].float().reshape(-1, 1)
        return combined * (magnitude / norm)

    def _lokr_delta(self, key: str, weight: torch.Tensor) -> torch.Tensor:
        from lycoris import create_lycoris_from_weights

        holder = nn.Module()
        holder.m = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        weights_sd = {f"lycoris_m.{rest}": tensor.float() for rest, tensor in self.lokr[key].items()}
        network, _ = create_lycoris_from_weights(self.strength, None, holder, weights_sd=weights_sd)
        network.load_state_dict(weights_sd, strict=False)
        module = network.loras[0]
        return module.get_diff_weight(multiplier=self.strength, shape=weight.shape)[0].float().reshape(weight.shape)


def lora_fits(parts: dict[str, tuple[int, ...]], shape: tuple[int, ...]) -> bool:
    """Whether LoRA (or DoRA) tensors of these shapes (`lora_A`, `lora_B`, DoRA's
    `lora_magnitude_vector`) change a weight of `shape` (out, in): B @ A is (out, in)."""
    down, up = parts.get("lora_A", ()), parts.get("lora_B", ())
    if len(shape) != 2 or len(down) != 2 or len(up) != 2:
        return False
    magnitude = parts.get("lora_magnitude_vector")
    return (up[1] == down[0] and (up[0], down[1]) == tuple(shape)
            and (magnitude is None or math.prod(magnitude) == shape[0]))


def lokr_shape(parts: dict[str, tuple[int, ...]]) -> tuple[int, ...] | None:
    """The shape of the weight change LoKr tensors of these shapes make: the Kronecker product
    of w1 (`lokr_w1`, or `lokr_w1_a` @ `lokr_w1_b`) and w2 (likewise); None when they do not
    compose (a missing factor, a Tucker core, or factors whose inner sizes differ)."""
    if "lokr_t2" in parts:
        return None
    factors = []
    for name in ("lokr_w1", "lokr_w2"):
        whole, left, right = parts.get(name), parts.get(f"{name}_a"), parts.get(f"{name}_b")
        if whole is not None and len(whole) == 2:
            factors.append(whole)
        elif left is not None and right is not None and len(left) == 2 and len(right) == 2 and left[1] == right[0]:
            factors.append((left[0], right[1]))
        else:
            return None
    return factors[0][0] * factors[1][0], factors[0][1] * factors[1][1]


def _plan(files: list[Path], dtype: torch.dtype | None) -> list[tuple[Path, str, torch.dtype, tuple[int, ...]]]:
    plan = []
    for path in files:
        with safe_open(path, framework="pt") as handle:
            for key in handle.keys():
                sliced = handle.get_slice(key)
                stored = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}.get(sliced.get_dtype())
                target = dtype if (dtype is not None and stored is not None) else _dtype_of(sliced.get_dtype())
                plan.append((path, key, target, tuple(sliced.get_shape())))
    return plan


def _dtype_of(name: str) -> torch.dtype:
    reverse = {v: k for k, v in _SAFETENSORS_DTYPES.items()}
    if name not in reverse:
        raise AdapterError(f"cannot merge a tensor stored as {name}")
    return reverse[name]


def _shards(plan, max_shard_bytes: int | None) -> list[list]:
    if not max_shard_bytes:
        return [plan]
    shards, current, size = [], [], 0
    for entry in plan:
        nbytes = torch.Size(entry[3]).numel() * torch.empty((), dtype=entry[2]).element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(entry)
        size += nbytes
    return shards + ([current] if current else [])


def merge_adapter(checkpoint: str | Path | None, adapter: str | Path, out_dir: str | Path, strength: float = 1.0,
                  dtype: str = "bf16", max_shard_bytes: int | None = None, shared: str = "copy",
                  overwrite: bool = False, checkpoints_dir: Path | None = None) -> Path:
    """Merge `adapter` (any format `load_adapter` reads, or a run) at `strength` into `checkpoint`
    (None: the checkpoint the adapter was trained on) and write the result to `out_dir`. `dtype`
    bf16|fp16|fp32|keep; `shared` copy|link|skip decides what happens to `vae/` and the text
    encoder when they are not beside `out_dir` already.
    `max_shard_bytes` (above 0) splits the weights into shards of at most that size (a tensor
    larger than it gets a shard of its own). Raises `AdapterError` / `CheckpointError` (a strength
    that is not a finite number, a shard size of 0 or less, an adapter whose tensors do not fit the
    base: before anything is written); an existing non-empty `out_dir` needs `overwrite`."""
    from acestep.export.formats import adapter_source, base_checkpoint, raise_if_disk_full
    from acestep.models.checkpoints import is_diffusers_layout
    from acestep.models.weights import weight_files

    if dtype not in (*DTYPES, "keep") or shared not in ("copy", "link", "skip"):
        raise AdapterError(f"dtype must be one of {', '.join([*DTYPES, 'keep'])} and shared one of copy, link, skip.")
    if not math.isfinite(strength):
        raise AdapterError(f"The merge strength must be a finite number (1 = as trained, e.g. 0.8); got {strength}.")
    if max_shard_bytes is not None and not max_shard_bytes > 0:
        raise AdapterError(f"The shard size must be more than 0 bytes; got {max_shard_bytes}.")
    adapter_path = adapter_source(adapter)
    base = base_checkpoint(adapter_path, checkpoint, checkpoints_dir)
    if is_diffusers_layout(base):
        raise AdapterError(f"{base} is in the diffusers layout; merge needs an official-layout checkpoint.")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise AdapterError(f"{out_dir} is not empty; choose another folder or pass --overwrite.")
    deltas = DeltaSource(adapter_path, strength)
    files, target = weight_files(base, "model.safetensors"), None if dtype == "keep" else DTYPES[dtype]
    plan = _plan(files, target)
    _check_fits(plan, deltas)  # an adapter of another model is refused before anything is written
    _check_free_space(out_dir, _bytes_to_write(plan, base, out_dir.parent, shared))
    try:
        with replaced_folder(out_dir, "merging") as tmp:  # an earlier merge is kept until this one is whole
            touched = _write_weights(plan, tmp, deltas, max_shard_bytes)
            if deltas.lora is not None and touched != deltas.modules():
                raise AdapterError(f"{adapter_path} adapts module(s) {sorted(deltas.modules() - touched)[:4]} that "
                                   f"{base} does not have: it was trained for another model.")
            if deltas.lora is None and not touched:
                raise AdapterError(f"{adapter_path} matches no module of {base}: it was trained for another model.")
            for name in BASE_FILES:
                if (base / name).is_file():
                    shutil.copy2(base / name, tmp / name)
            (tmp / "merge_info.json").write_text(json.dumps({
                "base": str(base), "adapter": str(adapter_path), "strength": strength, "dtype": dtype,
                "modules_merged": len(touched), "date": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2) + "\n")
    except BaseException as exc:
        raise_if_disk_full(exc, out_dir)
        raise
    _place_shared(base.parent, out_dir.parent, shared)
    return out_dir


def _module_of(key: str) -> str | None:
    """The diffusers path of the decoder module whose weight `key` (official naming) is, or None."""
    if not (key.startswith("decoder.") and key.endswith(".weight")):
        return None
    return convert.original_key_to_diffusers(key)[1][: -len(".weight")]


def _check_fits(plan, deltas: DeltaSource) -> None:
    """Raise AdapterError when a tensor of the adapter does not fit its base weight."""
    for _, key, _, shape in plan:
        module = _module_of(key)
        if module is not None:
            deltas.check_fits(module, shape)


def _bytes_to_write(plan, base: Path, target: Path, shared: str) -> int:
    """What a merge writes: the planned tensors, the base's small files, and the shared folders it
    copies (the safetensors headers and merge_info.json come on top: kilobytes)."""
    small = sum((base / name).stat().st_size for name in BASE_FILES if (base / name).is_file())
    copied = _shared_to_place(base.parent, target) if shared == "copy" else []
    return _plan_bytes(plan) + small + sum(folder_bytes(base.parent / name) for name in copied)


def _plan_bytes(plan) -> int:
    return sum(torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size() for _, _, dtype, shape in plan)


def _check_free_space(out_dir: Path, need: int) -> None:
    free = free_space(out_dir)
    if free < need:
        raise AdapterError(f"The merge writes {size_text(need)} into {out_dir}, and its disk has {size_text(free)} "
                           f"free: free {size_text(need - free)} or more, or choose a folder on another disk. "
                           "Nothing was written.")


def _write_weights(plan, folder: Path, deltas: DeltaSource, max_shard_bytes) -> set[str]:
    """Write the planned tensors, merged with the adapter's deltas, into `folder` (one file, or shards
    with an index); returns the modules the adapter changed. Each base file is opened once."""
    shards = _shards(plan, max_shard_bytes)
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    touched: set[str] = set()
    weight_map = {}
    with contextlib.ExitStack() as stack:
        handles = {}
        for shard, name in zip(shards, names, strict=True):
            writer = StreamingSafetensorsWriter(folder / name, [(k, d, s) for _, k, d, s in shard], {"format": "pt"})
            for path, key, target, _ in shard:
                if path not in handles:
                    handles[path] = stack.enter_context(safe_open(path, framework="pt"))
                tensor = handles[path].get_tensor(key)
                module = _module_of(key)
                merged = None if module is None else deltas.merged(module, tensor)
                if merged is not None:
                    touched.add(module)
                writer.write(key, (merged if merged is not None else tensor).to(target))
                weight_map[key] = name
            writer.close()
    if len(shards) > 1:
        (folder / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": _plan_bytes(plan)}, "weight_map": weight_map}, indent=2) + "\n")
    return touched


def _shared_to_place(source: Path, target: Path) -> list[str]:
    """The shared folders `_place_shared` copies or links from `source` to `target`."""
    if source.resolve() == target.resolve():
        return []
    return [name for name in SHARED_FOLDERS if not (target / name).exists() and (source / name).is_dir()]


def _place_shared(source: Path, target: Path, shared: str) -> None:
    """Make `vae/` and the text encoder available beside the merged checkpoint."""
    if shared == "skip":
        return
    for name in _shared_to_place(source, target):
        if shared == "link":
            (target / name).symlink_to((source / name).resolve(), target_is_directory=True)
        else:
            shutil.copytree(source / name, target / name)
