"""One exception tree for the whole project.

Every error a user can cause (a wrong path, a file of another model, a missing download) is an
`AceStepError` whose message names the file, the problem and the fix. Stages subclass it so the
CLI and the UI can tell them apart; tracebacks go to logs, messages to the user.
"""


class AceStepError(Exception):
    """Base class of every error this project raises on purpose."""


class EnvironmentProblem(AceStepError):
    """The Python environment lacks a package or runs outside the project's env/."""


class CheckpointError(AceStepError):
    """A model folder or weight file is missing, corrupt, or of another model."""


class CheckpointNotFoundError(CheckpointError):
    """A model is not on disk (and was not, or could not be, downloaded)."""


class DownloadError(CheckpointError):
    """Downloading a model from the Hugging Face Hub failed."""


class AudioError(AceStepError):
    """An audio file cannot be used: unreadable, empty, silent, or of an unknown format.

    `path` and `reason` are kept apart so batch jobs can list failures per file.
    """

    def __init__(self, path, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class DatasetError(AceStepError):
    """A dataset JSON, sidecar or CSV is malformed; the message names the file, sample and field."""


class PreprocessError(AceStepError):
    """Preprocessing cannot run or its output directory is inconsistent."""


class ConfigError(AceStepError):
    """A training config (TOML, `--set` override or preset) is malformed; names the field."""


class TrainingError(AceStepError):
    """Training cannot start or continue: a missing package, a non-finite loss, a bad resume."""


class PreviewError(AceStepError):
    """A preview cannot be rendered: bad settings, a model that does not fit, an unsupported adapter."""


class JobError(AceStepError):
    """A job cannot be submitted, found, stopped or read; the message names the job and the fix."""
