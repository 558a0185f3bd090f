"""No code runs from data: the package never unpickles, never evaluates strings, never trusts code
shipped with a model, never runs a shell; and a pickle planted where tensors are read is refused
without running."""

import ast
from pathlib import Path

import pytest
import torch

from .conftest import record

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "acestep").rglob("*.py")) + [ROOT / "launch.py"]
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "marshal", "shelve", "joblib"}


def unsafe_calls(source: str, name: str = "<source>") -> list[str]:
    """Every construct of `source` that could run code from data, as 'name:line: what'."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        where = f"{name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{where}: imports {m}" for m in modules if m.split(".")[0] in UNSAFE_MODULES]
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        if isinstance(func, ast.Name) and called in ("eval", "exec", "__import__"):
            found.append(f"{where}: {called}()")
        if called == "load" and isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "torch":
            weights_only = keywords.get("weights_only")
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                found.append(f"{where}: torch.load without weights_only=True")
        if "trust_remote_code" in keywords:
            value = keywords["trust_remote_code"]
            if not (isinstance(value, ast.Constant) and value.value is False):
                found.append(f"{where}: trust_remote_code")
        shell = keywords.get("shell")
        if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
            found.append(f"{where}: shell=")
    return found


def test_the_package_has_no_way_to_run_code_from_data():
    found = [hit for path in SOURCES for hit in unsafe_calls(path.read_text(encoding="utf-8"),
                                                             str(path.relative_to(ROOT)))]
    record("code from data", "source files scanned", len(SOURCES), "unsafe constructs found", len(found))
    assert not found, "\n".join(found)
    assert len(SOURCES) > 100  # the scan really read the package


@pytest.mark.parametrize("snippet, what", [
    ("import pickle", "imports pickle"),
    ("from dill import loads", "imports dill"),
    ("x = eval(text)", "eval()"),
    ("exec(code)", "exec()"),
    ("state = torch.load(path)", "torch.load without weights_only=True"),
    ("state = torch.load(path, weights_only=False)", "torch.load without weights_only=True"),
    ("m = AutoModel.from_pretrained(p, trust_remote_code=True)", "trust_remote_code"),
    ("subprocess.run(cmd, shell=True)", "shell="),
])
def test_the_scan_finds_each_unsafe_construct(snippet, what):
    assert [hit.split(": ", 1)[1] for hit in unsafe_calls(snippet)] == [what]


def test_the_scan_allows_the_safe_forms():
    safe = ("model.eval()\nx = torch.load(p, map_location='cpu', weights_only=True)\n"
            "AutoModel.from_pretrained(p, trust_remote_code=False)\nsubprocess.run(argv)\n")
    assert unsafe_calls(safe) == []


class Payload:
    """Unpickling this would create the file `marker` (proof that code ran)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_where_tensors_are_read_is_refused_and_never_runs(tmp_path):
    from acestep.errors import PreprocessError
    from acestep.preprocess.tensors import read_sample

    marker = tmp_path / "code-ran"
    planted = tmp_path / "s0.safetensors"
    torch.save({"target_latents": Payload(marker)}, planted)  # a pickle, under a tensors file's name
    with pytest.raises(PreprocessError, match="could not be read") as refused:
        read_sample(planted)
    record("code from data: planted pickle", "pickles planted as tensors", 1, "ran", int(marker.exists()))
    assert str(planted) in str(refused.value)
    assert not marker.exists()
