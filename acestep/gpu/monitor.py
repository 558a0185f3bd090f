"""What the NVIDIA GPUs hold right now: memory, utilisation, temperature and the processes using them.

Read through NVML (nvidia-ml-py), never through torch: the UI imports this module, and importing
torch or creating a CUDA context there would cost seconds and hold VRAM. Without an NVIDIA GPU,
driver or nvidia-ml-py, `read_gpus` reports "no NVIDIA GPU (...)" with the reason and the CPU facts;
it never raises for that. A query that fails on one GPU (a temperature a card does not report, a
process list the driver refuses) leaves that field None or empty, says so in `errors`, and the rest
is still reported.

Memory levels (for the UI's colour), from free memory, comparisons strict:
    critical  free < 1.5 GiB or free < 10 % of total  (not even the CUDA context and a small model fit)
    tight     free < 4 GiB   or free < 25 % of total  (only the smallest presets or preprocessing)
    ok        otherwise
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

GIB = 1024 ** 3

CRITICAL_FREE_BYTES = int(1.5 * GIB)
CRITICAL_FREE_FRACTION = 0.10
TIGHT_FREE_BYTES = 4 * GIB
TIGHT_FREE_FRACTION = 0.25

NO_GPU_PREFIX = "no NVIDIA GPU"


@dataclass(frozen=True)
class GpuProcess:
    """A process holding memory on a GPU. `used_bytes` is None where the driver does not say
    (Windows WDDM, processes of other containers)."""

    pid: int
    name: str
    used_bytes: int | None


@dataclass(frozen=True)
class GpuStatus:
    """One GPU as NVML sees it. `index` is NVML's index; `errors` lists the queries that failed
    ("temperature: Not Supported"), whose fields are None (or, for processes, empty)."""

    index: int
    name: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    utilization_percent: int | None
    temperature_c: int | None
    level: str
    processes: tuple[GpuProcess, ...]
    errors: tuple[str, ...] = ()
    compute_capability: tuple[int, int] | None = None

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB

    @property
    def used_gib(self) -> float:
        return self.used_bytes / GIB

    @property
    def free_gib(self) -> float:
        return self.free_bytes / GIB


@dataclass(frozen=True)
class SystemGpuReport:
    """All NVIDIA GPUs plus the host's CPU facts.

    `message` is "" when NVML answered and found GPUs, otherwise one line that starts with
    "no NVIDIA GPU" and gives the reason. `errors` lists failed system-wide queries and GPUs that
    could not be read at all (those are left out of `gpus`; the others keep their NVML index).
    `mps_available` is None unless torch was already imported by someone else.
    """

    gpus: tuple[GpuStatus, ...]
    driver_version: str | None
    cuda_driver_version: str | None
    message: str
    cpu: str
    cpu_count: int
    ram_total_bytes: int | None
    mps_available: bool | None
    errors: tuple[str, ...] = ()


def memory_level(free_bytes: int, total_bytes: int) -> str:
    """"critical", "tight" or "ok" for a GPU with this much free memory (thresholds: module doc)."""
    if free_bytes < CRITICAL_FREE_BYTES or free_bytes < CRITICAL_FREE_FRACTION * total_bytes:
        return "critical"
    if free_bytes < TIGHT_FREE_BYTES or free_bytes < TIGHT_FREE_FRACTION * total_bytes:
        return "tight"
    return "ok"


def read_gpus(nvml=None) -> SystemGpuReport:
    """Read every NVIDIA GPU through NVML, plus CPU/RAM/MPS facts.

    `nvml` is the pynvml module (default: `import pynvml`); tests pass a fake with the same
    functions and `NVMLError`. Never raises for a missing nvidia-ml-py, NVML library or driver, nor
    for a failing query: those become the report's `message` / `errors`. Calls nvmlShutdown after
    every successful nvmlInit.
    """
    host = _host_facts()
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError as error:
            return _no_gpu_report(f"the nvidia-ml-py package is not installed ({error}); "
                                  f"install it with: pip install nvidia-ml-py", host)
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as error:  # LibraryNotFound (no driver), DriverNotLoaded, ...
        return _no_gpu_report(_nvml_text(error), host)
    try:
        return _read_initialised(nvml, host)
    finally:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError:
            pass  # the readings are taken; a failed shutdown only leaves NVML's refcount up


def own_process_ids() -> set[int]:
    """This process and all its descendants (the trainer's jobs), to tell them from other
    processes on a GPU. Uses psutil; without it, the /proc process table on Linux; elsewhere only
    this process."""
    pid = os.getpid()
    try:
        import psutil
    except ImportError:
        return {pid} | _descendants_from_proc(pid)
    try:
        return {pid} | {child.pid for child in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return {pid}


def format_report(report: SystemGpuReport, own_pids: set[int] | None = None) -> str:
    """The text `acestep-trainer gpu` prints: driver line, one block per GPU (memory, level,
    utilisation, temperature, other processes and their VRAM), failed queries, then the CPU line.
    Processes in `own_pids` (default: `own_process_ids()`) are listed as this trainer's."""
    own = own_process_ids() if own_pids is None else set(own_pids)
    lines: list[str] = []
    if report.message:
        lines.append(report.message)
    if report.driver_version or report.cuda_driver_version:
        lines.append(f"NVIDIA driver {report.driver_version or 'unknown'}, "
                     f"CUDA {report.cuda_driver_version or 'unknown'}")
    for gpu in report.gpus:
        lines.extend(_gpu_lines(gpu, own))
    lines.extend(f"could not read {error}" for error in report.errors)
    lines.append(_host_line(report))
    return "\n".join(lines)


# --- reading NVML ---

def _read_initialised(nvml, host: dict) -> SystemGpuReport:
    errors: list[str] = []
    driver = _query(nvml, errors, "driver version", lambda: _text(nvml.nvmlSystemGetDriverVersion()))
    cuda = _query(nvml, errors, "CUDA driver version",
                  lambda: _cuda_version_text(nvml.nvmlSystemGetCudaDriverVersion()))
    try:
        count = int(nvml.nvmlDeviceGetCount())
    except nvml.NVMLError as error:
        return SystemGpuReport(gpus=(), driver_version=driver, cuda_driver_version=cuda,
                               message=f"{NO_GPU_PREFIX} (the NVIDIA driver could not list its GPUs: "
                                       f"{_nvml_text(error)})",
                               errors=tuple(errors), **host)
    gpus = []
    for index in range(count):
        try:
            gpus.append(_read_gpu(nvml, index))
        except nvml.NVMLError as error:  # no handle or no memory info: nothing useful to show
            errors.append(f"GPU {index}: {_nvml_text(error)}")
    message = "" if count else f"{NO_GPU_PREFIX} (the NVIDIA driver reports 0 GPUs)"
    return SystemGpuReport(gpus=tuple(gpus), driver_version=driver, cuda_driver_version=cuda,
                           message=message, errors=tuple(errors), **host)


def _read_gpu(nvml, index: int) -> GpuStatus:
    """One GPU; raises NVMLError only when the handle or the memory info cannot be read."""
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    total, used, free = int(memory.total), int(memory.used), int(memory.free)
    errors: list[str] = []
    name = _query(nvml, errors, "name", lambda: _text(nvml.nvmlDeviceGetName(handle)))
    utilization = _query(nvml, errors, "utilization",
                         lambda: int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu))
    temperature = _query(nvml, errors, "temperature",
                         lambda: int(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)))
    capability = _query(nvml, errors, "compute capability",
                        lambda: tuple(int(v) for v in nvml.nvmlDeviceGetCudaComputeCapability(handle)))
    lists = []
    for kind, function in (("compute", nvml.nvmlDeviceGetComputeRunningProcesses),
                           ("graphics", nvml.nvmlDeviceGetGraphicsRunningProcesses)):
        lists.append(_query(nvml, errors, f"{kind} processes", lambda function=function: function(handle)) or [])
    processes = _merge_processes(nvml, lists[0] + lists[1])
    return GpuStatus(index=index, name=name or f"NVIDIA GPU {index}", total_bytes=total, used_bytes=used,
                     free_bytes=free, utilization_percent=utilization, temperature_c=temperature,
                     level=memory_level(free, total), processes=processes,
                     errors=tuple(errors), compute_capability=capability)


def _merge_processes(nvml, entries) -> tuple[GpuProcess, ...]:
    """Compute and graphics entries, one per pid (the larger known memory figure), biggest first."""
    memory: dict[int, int | None] = {}
    for entry in entries:
        pid = int(entry.pid)
        used = None if entry.usedGpuMemory is None else int(entry.usedGpuMemory)
        known = [value for value in (memory.get(pid), used) if value is not None]
        memory[pid] = max(known) if known else None
    processes = [GpuProcess(pid=pid, name=_process_name(nvml, pid), used_bytes=used)
                 for pid, used in memory.items()]
    processes.sort(key=lambda p: (p.used_bytes is None, -(p.used_bytes or 0), p.pid))
    return tuple(processes)


def _process_name(nvml, pid: int) -> str:
    """psutil's name, else /proc/<pid>/comm, else NVML's process name, else "pid N".

    In a container NVML may report host pids that this namespace cannot see; then the name comes
    from NVML or stays "pid N".
    """
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            return psutil.Process(pid).name()
        except psutil.Error:
            pass  # not visible here; try NVML below
    else:
        try:
            name = Path(f"/proc/{pid}/comm").read_text(encoding="utf-8", errors="replace").strip()
            if name:
                return name
        except OSError:
            pass  # not Linux or not visible here; try NVML below
    try:
        name = _text(nvml.nvmlSystemGetProcessName(pid)).strip()
    except nvml.NVMLError:
        name = ""
    return name or f"pid {pid}"


def _query(nvml, errors: list[str], what: str, read):
    """read(), or None with "what: reason" appended to errors when NVML refuses."""
    try:
        return read()
    except nvml.NVMLError as error:
        errors.append(f"{what}: {_nvml_text(error)}")
        return None


def _nvml_text(error: BaseException) -> str:
    return str(error).strip() or type(error).__name__


def _text(value) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _cuda_version_text(version: int) -> str:
    """NVML's 12040 -> "12.4"."""
    return f"{version // 1000}.{version % 1000 // 10}"


def _no_gpu_report(reason: str, host: dict) -> SystemGpuReport:
    return SystemGpuReport(gpus=(), driver_version=None, cuda_driver_version=None,
                           message=f"{NO_GPU_PREFIX} (NVML not available: {reason})", **host)


# --- the host ---

def _host_facts() -> dict:
    return {"cpu": _cpu_name(), "cpu_count": _cpu_count(), "ram_total_bytes": _ram_total_bytes(),
            "mps_available": _mps_available()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux
    return platform.processor() or platform.machine() or "unknown CPU"


def _cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):  # the CPUs this process may use (containers, taskset)
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _ram_total_bytes() -> int | None:
    try:
        import psutil
        return int(psutil.virtual_memory().total)
    except ImportError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def _mps_available() -> bool | None:
    torch = sys.modules.get("torch")  # only if already imported: importing torch here costs seconds
    if torch is None:
        return None
    try:
        return bool(torch.backends.mps.is_available())
    except (AttributeError, RuntimeError):
        return None


def _descendants_from_proc(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text(encoding="utf-8", errors="replace")
            parents[int(stat.parent.name)] = int(text.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we read
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


# --- text ---

def _gpu_lines(gpu: GpuStatus, own: set[int]) -> list[str]:
    utilization = "n/a" if gpu.utilization_percent is None else f"{gpu.utilization_percent}%"
    temperature = "n/a" if gpu.temperature_c is None else f"{gpu.temperature_c} °C"
    lines = [f"GPU {gpu.index}: {gpu.name}",
             f"  memory: {gpu.used_gib:.2f} / {gpu.total_gib:.2f} GiB used, {gpu.free_gib:.2f} GiB free "
             f"({gpu.level})",
             f"  utilization: {utilization}, temperature: {temperature}"]
    others = [p for p in gpu.processes if p.pid not in own]
    mine = [p for p in gpu.processes if p.pid in own]
    lines.append("  other processes:" if others else "  other processes: none")
    lines.extend(f"    {_process_text(p)}" for p in others)
    if mine:
        lines.append("  this trainer:")
        lines.extend(f"    {_process_text(p)}" for p in mine)
    lines.extend(f"  could not read {error}" for error in gpu.errors)
    return lines


def _process_text(process: GpuProcess) -> str:
    used = "n/a" if process.used_bytes is None else f"{process.used_bytes / GIB:.2f} GiB"
    return f"pid {process.pid:<8} {process.name:<24} {used}"


def _host_line(report: SystemGpuReport) -> str:
    ram = "unknown" if report.ram_total_bytes is None else f"{report.ram_total_bytes / GIB:.1f} GiB"
    line = f"CPU: {report.cpu}, {report.cpu_count} threads, RAM {ram}"
    if report.mps_available is not None:
        line += f", Apple MPS {'available' if report.mps_available else 'not available'}"
    return line
