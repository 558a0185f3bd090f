"""What every tab shares: the workspace folders the app may touch, the job manager, and the
check that keeps every typed or browsed path inside those folders.

    workspace = Workspace(Path("workspace"), checkpoints=Path("checkpoints"))
    ctx = AppContext.create(workspace)
    folder = ctx.workspace.check_path("audio/my-songs", must_exist=True)   # or raises PathRefused

The workspace holds `audio/` (songs to label), `datasets/` (dataset JSONs), `tensors/`
(preprocessed tensors), `runs/` (training runs, and the jobs in `runs/.jobs`), `outputs/`
(exports and merged models) and `profiles/` (saved settings). The checkpoints folder and any
`--data-root` folders are roots too. Gradio serves files from these roots only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from acestep.errors import AceStepError
from acestep.jobs import JobManager
from acestep.models.checkpoints import DIT, list_checkpoints
from acestep.preprocess.manifest import MANIFEST_NAME

WORKSPACE_FOLDERS = ("audio", "datasets", "tensors", "runs", "outputs", "profiles")


def holds_tensors(folder: str | Path) -> bool:
    """Whether `folder` is a preprocessed tensors folder (it holds the manifest)."""
    return (Path(folder) / MANIFEST_NAME).is_file()


class PathRefused(AceStepError):
    """A path typed or browsed in the UI lies outside the folders the app may use."""


@dataclass(frozen=True)
class Workspace:
    """The folders the app works in. `extra_roots` are more folders it may read and write
    (`launch.py --data-root`); relative paths typed in the UI are taken from `root`."""

    root: Path
    checkpoints: Path
    extra_roots: tuple[Path, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root).expanduser().resolve())
        object.__setattr__(self, "checkpoints", Path(self.checkpoints).expanduser().resolve())
        object.__setattr__(self, "extra_roots", tuple(Path(p).expanduser().resolve() for p in self.extra_roots))

    @property
    def audio(self) -> Path:
        return self.root / "audio"

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def tensors(self) -> Path:
        return self.root / "tensors"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    @property
    def profiles(self) -> Path:
        return self.root / "profiles"

    @property
    def jobs(self) -> Path:
        return self.runs / ".jobs"

    def roots(self) -> tuple[Path, ...]:
        """Every folder the app may read or write (what Gradio's allowed_paths gets)."""
        return (self.root, self.checkpoints, *self.extra_roots)

    def create(self) -> Workspace:
        """Make the workspace folders (idempotent); returns self."""
        for name in WORKSPACE_FOLDERS:
            (self.root / name).mkdir(parents=True, exist_ok=True)
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        return self

    def check_path(self, text: str | Path, must_exist: bool = False, what: str = "path") -> Path:
        """`text` resolved (~ expanded, relative to the workspace root, links followed) when it
        lies inside one of the roots. Raises PathRefused naming the path and the roots otherwise,
        or when `must_exist` and it does not exist."""
        raw = str(text).strip()
        if not raw:
            raise PathRefused(f"No {what} given.")
        path = Path(raw).expanduser()
        resolved = (path if path.is_absolute() else self.root / path).resolve()
        if not any(resolved == root or resolved.is_relative_to(root) for root in self.roots()):
            roots = ", ".join(str(root) for root in self.roots())
            raise PathRefused(f"The {what} {raw} ({resolved}) is outside the folders this app may use: {roots}. "
                              "Move the files into the workspace, or start the app with --data-root FOLDER.")
        if must_exist and not resolved.exists():
            raise PathRefused(f"The {what} {resolved} does not exist.")
        return resolved

    def dit_names(self, complete_only: bool = False) -> list[str]:
        """The DiT folders in the checkpoints folder (with `complete_only`, those whose weights are
        all there: what training and merging can load)."""
        return [info.name for info in list_checkpoints(self.checkpoints)
                if info.kind == DIT and (info.complete or not complete_only)]

    def relative(self, path: Path) -> str:
        """`path` for display: relative to the workspace root when inside it."""
        path = Path(path)
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)


@dataclass
class AppContext:
    """The workspace and the job manager over `workspace.jobs`, shared by every tab and browser."""

    workspace: Workspace
    jobs: JobManager
    demo: bool = False
    defaults: dict = field(default_factory=dict)  # paths the demo pre-selects: dataset, audio, ...

    @classmethod
    def create(cls, workspace: Workspace, demo: bool = False, defaults: dict | None = None) -> AppContext:
        workspace.create()
        return cls(workspace, JobManager(workspace.jobs), demo, dict(defaults or {}))
