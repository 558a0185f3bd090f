"""GPU awareness: what the GPUs hold now (`monitor`) and what a training config needs (`estimate`).

Import-light on purpose: the UI imports this package, so nothing here imports torch. Import
`acestep.gpu.estimate` directly where it is needed.
"""

from acestep.gpu.monitor import (
    GpuProcess,
    GpuStatus,
    SystemGpuReport,
    format_report,
    memory_level,
    own_process_ids,
    read_gpus,
)

__all__ = ["GpuProcess", "GpuStatus", "SystemGpuReport", "format_report", "memory_level", "own_process_ids",
           "read_gpus"]
