"""Which packages import: the required and optional tables, and the project's own install.

Each check really imports the package (a package that is installed but fails to import, such as
a CUDA torch with missing libraries, is BROKEN). Standard library only at import time.
"""

from __future__ import annotations

import enum
import importlib
import importlib.metadata
import importlib.util
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Mapping
from urllib.parse import urlparse
from urllib.request import url2pathname

from acestep.environment.torch_info import error_line

# import name -> pip (distribution) name
REQUIRED_PACKAGES: Mapping[str, str] = MappingProxyType({
    "torch": "torch",
    "diffusers": "diffusers",
    "transformers": "transformers",
    "peft": "peft",
    "lightning_fabric": "lightning-fabric",
    "gradio": "gradio",
    "safetensors": "safetensors",
    "soundfile": "soundfile",
    "soxr": "soxr",
    "prodigyopt": "prodigyopt",
    "huggingface_hub": "huggingface-hub",
    "accelerate": "accelerate",
    "pydub": "pydub",
    "lycoris": "lycoris-lora",
    "diskcache": "diskcache",
    "pynvml": "nvidia-ml-py",
    "tensorboard": "tensorboard",
    "numpy": "numpy",
    "tomli_w": "tomli-w",
})
OPTIONAL_PACKAGES: Mapping[str, str] = MappingProxyType({
    "bitsandbytes": "bitsandbytes",
    "torchao": "torchao",
    "flash_attn": "flash-attn",
})
PROJECT_DISTRIBUTION = "acestep-lora-trainer"


class PackageState(enum.Enum):
    OK = "ok"
    MISSING = "MISSING"
    BROKEN = "BROKEN"


@dataclass(frozen=True)
class PackageStatus:
    """The result of importing one package: state, version and, when broken, why and from where."""

    name: str
    pip_name: str
    required: bool
    state: PackageState
    version: str | None = None
    reason: str | None = None
    origin: str | None = None

    @property
    def ok(self) -> bool:
        return self.state is PackageState.OK


def check_package(name: str, pip_name: str | None = None, *,
                  required: bool = True) -> PackageStatus:
    """Import `name` for real and report it.

    Returns a PackageStatus: OK with its version; MISSING when the module itself is not found;
    BROKEN (with the first line of the error and the file it came from) when importing it raises
    anything else, including a missing dependency of the package. Never raises an Exception.
    """
    pip_name = pip_name or name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # import-time chatter; ffmpeg is reported on its own
        try:
            module = importlib.import_module(name)
        except Exception as error:
            if isinstance(error, ModuleNotFoundError) and error.name == name:
                return PackageStatus(name, pip_name, required, PackageState.MISSING)
            return PackageStatus(name, pip_name, required, PackageState.BROKEN,
                                 _installed_version(pip_name), error_line(error),
                                 _module_origin(name))
    return PackageStatus(name, pip_name, required, PackageState.OK,
                         _installed_version(pip_name, module))


def check_packages(names: Iterable[str], *, required: bool = True) -> list[PackageStatus]:
    """Import each of `names` (import names; pip names come from the package tables, else the
    import name) and return one PackageStatus per name, in order. Never raises an Exception."""
    known = {**REQUIRED_PACKAGES, **OPTIONAL_PACKAGES}
    return [check_package(name, known.get(name, name), required=required) for name in names]


def check_project_install(root: Path, distribution: str = PROJECT_DISTRIBUTION) -> PackageStatus:
    """Is this project pip-installed in editable mode from `root`? Job processes run
    `python -m acestep.cli` / `acestep-trainer` from other folders, which needs that.

    OK with the version; MISSING when not installed; BROKEN when installed as a copy or from
    another folder (code changes in `root` would not be the code that runs)."""
    # All matches, not the first: the build leaves an .egg-info in the project folder, which
    # comes first on sys.path when Python runs there.
    found = [(dist, _editable_source(dist))
             for dist in importlib.metadata.distributions(name=distribution)]
    if not found:
        return PackageStatus("acestep", distribution, True, PackageState.MISSING)
    for dist, source in found:
        if source is not None and _same_path(source, root):
            return PackageStatus("acestep", distribution, True, PackageState.OK, dist.version)
    dist, source = next(((d, s) for d, s in found if s is not None), found[0])
    reason = (f"installed from {source}, not from {root}" if source is not None
              else "installed as a copy, not editable (pip install -e)")
    return PackageStatus("acestep", distribution, True, PackageState.BROKEN, dist.version, reason)


def _editable_source(dist: importlib.metadata.Distribution) -> Path | None:
    """The folder an editable install points to (PEP 610 direct_url.json), else None."""
    try:
        direct_url = json.loads(dist.read_text("direct_url.json") or "{}")
    except ValueError:
        return None
    url = direct_url.get("url", "")
    if not direct_url.get("dir_info", {}).get("editable") or not url.startswith("file:"):
        return None
    return Path(url2pathname(urlparse(url).path))


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _installed_version(pip_name: str, module: object = None) -> str | None:
    try:
        return importlib.metadata.version(pip_name)
    except importlib.metadata.PackageNotFoundError:
        version = getattr(module, "__version__", None)
        return str(version) if version is not None else None


def _module_origin(name: str) -> str | None:
    try:
        spec = importlib.util.find_spec(name)
    except Exception:  # a broken parent package can make find_spec itself raise
        return None
    return spec.origin if spec is not None else None
