"""Audio for the trainer: decode any supported file to 48 kHz stereo float32, measure it,
normalise its loudness, write WAV files (`io`), split long files into parts (`split`), and analyse
levels, tempo and key (`analysis`).

Every per-file problem raises `acestep.errors.AudioError(path, reason)`; batch functions turn
those into `FileFailure` entries and carry on.
"""

from acestep.audio.analysis import (
    AudioAnalysis,
    AudioStats,
    analyze,
    audio_stats,
    file_content_hash,
    integrated_loudness,
)
from acestep.audio.decode import AUDIO_EXTENSIONS
from acestep.audio.io import (
    NORMALIZATION_MODES,
    SAMPLE_RATE,
    AudioInfo,
    FileFailure,
    LoudnessError,
    load_audio,
    normalize_loudness,
    probe_audio,
    write_wav,
)
from acestep.audio.split import SplitResult, split_audio_file, split_folder

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioAnalysis",
    "analyze",
    "NORMALIZATION_MODES",
    "SAMPLE_RATE",
    "AudioInfo",
    "AudioStats",
    "FileFailure",
    "LoudnessError",
    "SplitResult",
    "audio_stats",
    "file_content_hash",
    "integrated_loudness",
    "load_audio",
    "normalize_loudness",
    "probe_audio",
    "split_audio_file",
    "split_folder",
    "write_wav",
]
