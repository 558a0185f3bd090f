"""Log lines and warnings from the libraries we use that tell our users nothing, silenced in every
entry point that imports those libraries (the CLI and the environment check).

Each entry says why it is noise; anything not listed here is shown as the library writes it.
"""

from __future__ import annotations

import logging
import warnings

# bitsandbytes warns on every import, on CPUs with AVX512-BF16, that an optional kernel for its CPU
# 4-bit inference path could not be loaded. Our 4-bit layers (model.quantization) keep that path
# off (acestep/training/quantization.py): keep that line out of the logs.
QUIET_LOGGERS = ("bitsandbytes.backends.cpu.ops",)
# diffusers builds the Oobleck VAE with torch's deprecated `weight_norm`; the weights load the same,
# and the FutureWarning (addressed to diffusers) would be the first line of every VAE command.
QUIET_WARNINGS = (r"`torch\.nn\.utils\.weight_norm` is deprecated",)


def silence_library_noise() -> None:
    """Drop the log lines and warnings listed above, in this process, before the libraries load."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)
