"""Audio for the trainer: decode any supported file to 48 kHz stereo float32, measure it,
normalise its loudness, write and split WAV files (`io`), and analyse levels, tempo and key
(`analysis`).

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
from acestep.audio.io import (
    AUDIO_EXTENSIONS,
    NORMALIZATION_MODES,
    SAMPLE_RATE,
    AudioInfo,
    FileFailure,
    LoudnessError,
    SplitResult,
    load_audio,
    normalize_loudness,
    probe_audio,
    split_audio_file,
    split_folder,
    write_wav,
)

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
