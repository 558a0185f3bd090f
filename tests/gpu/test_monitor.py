"""acestep.gpu.monitor against a fake NVML module (0, 1 and 2 GPUs, foreign processes, failing
queries) and against the real pynvml of a machine without a GPU."""

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from acestep.gpu import monitor
from acestep.gpu.monitor import GIB, GpuProcess, format_report, memory_level, own_process_ids, read_gpus

CARD_24GB = 25_757_220_864  # what NVML reports for a 24 GB card (RTX 3090 / 4090): 23.99 GiB
MIB = 1024 ** 2
# Linux pids never exceed 2**22, so these are nobody's here: names must come from NVML.
PYTHON_PID, XORG_PID, HIDDEN_PID, BLENDER_PID = 4_200_001, 4_200_002, 4_200_003, 4_200_004
NVML_NAMES = {PYTHON_PID: "/usr/bin/python3", XORG_PID: "/usr/lib/xorg/Xorg", BLENDER_PID: "blender"}


class FakeNVMLError(Exception):
    """Stands in for pynvml.NVMLError; str() is the NVML error text, like the real one."""


@dataclass
class FakeGpu:
    name: str
    total: int
    used: int
    utilization: int = 0
    temperature: int = 40
    capability: tuple = (8, 9)
    compute: list = field(default_factory=list)   # (pid, bytes or None)
    graphics: list = field(default_factory=list)
    failing: dict = field(default_factory=dict)   # NVML function name -> error text


class FakeNVML:
    """The part of pynvml that the monitor uses, with counters for init/shutdown."""

    NVMLError = FakeNVMLError
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, gpus=(), init_error=None, failing=None, driver="550.54.14", cuda=12040):
        self.gpus = list(gpus)
        self.init_error = init_error
        self.failing = failing or {}  # system-wide function name -> error text
        self.driver, self.cuda = driver, cuda
        self.inits = self.shutdowns = 0

    def _check(self, function, gpu=None):
        text = (gpu.failing if gpu is not None else self.failing).get(function)
        if text is not None:
            raise FakeNVMLError(text)

    def nvmlInit(self):
        if self.init_error is not None:
            raise self.init_error
        self.inits += 1

    def nvmlShutdown(self):
        self.shutdowns += 1
        self._check("nvmlShutdown")

    def nvmlSystemGetDriverVersion(self):
        self._check("nvmlSystemGetDriverVersion")
        return self.driver

    def nvmlSystemGetCudaDriverVersion(self):
        self._check("nvmlSystemGetCudaDriverVersion")
        return self.cuda

    def nvmlSystemGetProcessName(self, pid):
        if pid not in NVML_NAMES:
            raise FakeNVMLError("Not Found")
        return NVML_NAMES[pid].encode()  # old pynvml returned bytes

    def nvmlDeviceGetCount(self):
        self._check("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        return self.gpus[index]

    def nvmlDeviceGetName(self, gpu):
        self._check("nvmlDeviceGetName", gpu)
        return gpu.name

    def nvmlDeviceGetMemoryInfo(self, gpu):
        self._check("nvmlDeviceGetMemoryInfo", gpu)
        return SimpleNamespace(total=gpu.total, used=gpu.used, free=gpu.total - gpu.used)

    def nvmlDeviceGetUtilizationRates(self, gpu):
        self._check("nvmlDeviceGetUtilizationRates", gpu)
        return SimpleNamespace(gpu=gpu.utilization, memory=0)

    def nvmlDeviceGetTemperature(self, gpu, sensor):
        assert sensor == self.NVML_TEMPERATURE_GPU
        self._check("nvmlDeviceGetTemperature", gpu)
        return gpu.temperature

    def nvmlDeviceGetCudaComputeCapability(self, gpu):
        self._check("nvmlDeviceGetCudaComputeCapability", gpu)
        return gpu.capability

    def nvmlDeviceGetComputeRunningProcesses(self, gpu):
        self._check("nvmlDeviceGetComputeRunningProcesses", gpu)
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in gpu.compute]

    def nvmlDeviceGetGraphicsRunningProcesses(self, gpu):
        self._check("nvmlDeviceGetGraphicsRunningProcesses", gpu)
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in gpu.graphics]


def rtx_4090(**changes) -> FakeGpu:
    values = dict(name="NVIDIA GeForce RTX 4090", total=CARD_24GB, used=5 * GIB, utilization=37, temperature=61,
                  compute=[(PYTHON_PID, 3 * GIB), (HIDDEN_PID, None)],
                  graphics=[(XORG_PID, 300 * MIB), (PYTHON_PID, 3 * GIB)])
    values.update(changes)
    return FakeGpu(**values)


# --- no NVIDIA GPU ---

def test_without_nvidia_ml_py_the_report_says_no_gpu_and_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    report = read_gpus()
    assert report.gpus == ()
    assert report.message.startswith("no NVIDIA GPU (NVML not available: the nvidia-ml-py package is not installed")
    assert "pip install nvidia-ml-py" in report.message
    assert report.driver_version is None and report.cuda_driver_version is None
    assert report.cpu and report.cpu_count >= 1


@pytest.mark.parametrize("code_name, text", [("NVML_ERROR_LIBRARY_NOT_FOUND", "NVML Shared Library Not Found"),
                                             ("NVML_ERROR_DRIVER_NOT_LOADED", "Driver Not Loaded")])
def test_real_pynvml_init_errors_give_a_no_gpu_report(monkeypatch, code_name, text):
    pynvml = pytest.importorskip("pynvml")
    shutdowns = []

    def failing_init():
        raise pynvml.NVMLError(getattr(pynvml, code_name))  # becomes NVMLError_LibraryNotFound etc.

    monkeypatch.setattr(pynvml, "nvmlInit", failing_init)
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: shutdowns.append(1))
    report = read_gpus()
    assert report.message == f"no NVIDIA GPU (NVML not available: {text})"
    assert report.gpus == () and report.errors == ()
    assert shutdowns == []  # no shutdown without a successful init
    assert format_report(report, own_pids=set()).splitlines()[0] == report.message


def test_this_machine_is_read_without_raising():
    report = read_gpus()  # the real pynvml; on a machine without a GPU, nvmlInit raises LibraryNotFound
    if report.gpus:
        assert report.message == ""
        assert all(gpu.total_bytes > 0 and gpu.level in ("ok", "tight", "critical") for gpu in report.gpus)
    else:
        assert report.message.startswith("no NVIDIA GPU (")
    assert report.cpu_count >= 1
    assert report.ram_total_bytes is None or report.ram_total_bytes > 0


def test_fake_init_error_is_reported_and_nothing_is_shut_down():
    nvml = FakeNVML(init_error=FakeNVMLError("Driver Not Loaded"))
    report = read_gpus(nvml)
    assert report.message == "no NVIDIA GPU (NVML not available: Driver Not Loaded)"
    assert nvml.shutdowns == 0


def test_zero_gpus_is_no_gpu_with_the_driver_version():
    nvml = FakeNVML(gpus=[])
    report = read_gpus(nvml)
    assert report.gpus == ()
    assert report.message == "no NVIDIA GPU (the NVIDIA driver reports 0 GPUs)"
    assert (report.driver_version, report.cuda_driver_version) == ("550.54.14", "12.4")
    assert (nvml.inits, nvml.shutdowns) == (1, 1)


def test_a_device_count_failure_is_no_gpu_and_still_shuts_down():
    nvml = FakeNVML(gpus=[rtx_4090()], failing={"nvmlDeviceGetCount": "Unknown Error"})
    report = read_gpus(nvml)
    assert report.gpus == ()
    assert report.message == "no NVIDIA GPU (the NVIDIA driver could not list its GPUs: Unknown Error)"
    assert nvml.shutdowns == 1


# --- one and two GPUs ---

def test_one_24gb_card_numbers_processes_and_driver():
    nvml = FakeNVML(gpus=[rtx_4090()], cuda=12080)
    report = read_gpus(nvml)
    assert report.message == "" and report.errors == ()
    assert (report.driver_version, report.cuda_driver_version) == ("550.54.14", "12.8")
    (gpu,) = report.gpus
    assert (gpu.index, gpu.name) == (0, "NVIDIA GeForce RTX 4090")
    assert (gpu.total_bytes, gpu.used_bytes, gpu.free_bytes) == (CARD_24GB, 5 * GIB, CARD_24GB - 5 * GIB)
    assert round(gpu.total_gib, 2) == 23.99 and gpu.used_gib == 5.0
    assert round(gpu.free_gib, 2) == 18.99
    assert (gpu.utilization_percent, gpu.temperature_c, gpu.level) == (37, 61, "ok")
    # compute + graphics merged, python (in both lists) once, biggest first, unknown memory last
    assert gpu.processes == (GpuProcess(PYTHON_PID, "/usr/bin/python3", 3 * GIB),
                             GpuProcess(XORG_PID, "/usr/lib/xorg/Xorg", 300 * MIB),
                             GpuProcess(HIDDEN_PID, f"pid {HIDDEN_PID}", None))
    assert gpu.errors == ()
    assert (nvml.inits, nvml.shutdowns) == (1, 1)


def test_two_gpus_each_with_their_own_processes_and_levels():
    second = FakeGpu(name="NVIDIA GeForce RTX 3060", total=12 * GIB, used=11 * GIB, utilization=99, temperature=80,
                     compute=[(BLENDER_PID, 10 * GIB), (os.getpid(), 512 * MIB)])
    report = read_gpus(FakeNVML(gpus=[rtx_4090(), second]))
    assert [gpu.index for gpu in report.gpus] == [0, 1]
    assert [gpu.level for gpu in report.gpus] == ["ok", "critical"]  # 1 GiB free is under 1.5 GiB
    assert [p.pid for p in report.gpus[0].processes] == [PYTHON_PID, XORG_PID, HIDDEN_PID]
    own_name = monitor._process_name(FakeNVML(), os.getpid())
    assert report.gpus[1].processes == (GpuProcess(BLENDER_PID, "blender", 10 * GIB),
                                        GpuProcess(os.getpid(), own_name, 512 * MIB))


def test_a_pid_in_both_lists_keeps_the_known_memory_figure():
    # known first then unknown, and unknown first then known: both keep the figure
    gpu = rtx_4090(compute=[(PYTHON_PID, 2 * GIB), (XORG_PID, None), (BLENDER_PID, None)],
                   graphics=[(PYTHON_PID, None), (XORG_PID, 300 * MIB), (BLENDER_PID, None)])
    (status,) = read_gpus(FakeNVML(gpus=[gpu])).gpus
    assert status.processes == (GpuProcess(PYTHON_PID, "/usr/bin/python3", 2 * GIB),
                                GpuProcess(XORG_PID, "/usr/lib/xorg/Xorg", 300 * MIB),
                                GpuProcess(BLENDER_PID, "blender", None))


def test_a_failing_temperature_is_none_and_the_rest_is_reported():
    broken = rtx_4090(failing={"nvmlDeviceGetTemperature": "Not Supported"})
    nvml = FakeNVML(gpus=[rtx_4090(), broken])
    first, second = read_gpus(nvml).gpus
    assert first.temperature_c == 61 and first.errors == ()
    assert second.temperature_c is None
    assert second.errors == ("temperature: Not Supported",)
    assert (second.name, second.utilization_percent, second.free_bytes, second.level) == (
        "NVIDIA GeForce RTX 4090", 37, CARD_24GB - 5 * GIB, "ok")
    assert len(second.processes) == 3
    assert nvml.shutdowns == 1


def test_failing_name_utilisation_and_one_process_list():
    broken = rtx_4090(failing={"nvmlDeviceGetName": "Unknown Error", "nvmlDeviceGetUtilizationRates": "GPU is lost",
                               "nvmlDeviceGetComputeRunningProcesses": "Insufficient Permissions"})
    (gpu,) = read_gpus(FakeNVML(gpus=[broken])).gpus
    assert gpu.name == "NVIDIA GPU 0" and gpu.utilization_percent is None and gpu.temperature_c == 61
    assert [p.pid for p in gpu.processes] == [PYTHON_PID, XORG_PID]  # from the graphics list
    assert gpu.errors == ("name: Unknown Error", "utilization: GPU is lost",
                          "compute processes: Insufficient Permissions")


def test_a_gpu_without_memory_info_is_left_out_and_named_in_errors():
    lost = rtx_4090(failing={"nvmlDeviceGetMemoryInfo": "GPU is lost"})
    report = read_gpus(FakeNVML(gpus=[rtx_4090(), lost]))
    assert [gpu.index for gpu in report.gpus] == [0]
    assert report.errors == ("GPU 1: GPU is lost",)
    assert report.message == ""
    assert "could not read GPU 1: GPU is lost" in format_report(report, own_pids=set())


def test_failing_system_queries_and_shutdown_do_not_raise():
    nvml = FakeNVML(gpus=[rtx_4090()], failing={"nvmlSystemGetDriverVersion": "Not Supported",
                                                "nvmlSystemGetCudaDriverVersion": "Function Not Found",
                                                "nvmlShutdown": "Uninitialized"})
    report = read_gpus(nvml)
    assert report.driver_version is None and report.cuda_driver_version is None
    assert report.errors == ("driver version: Not Supported", "CUDA driver version: Function Not Found")
    assert len(report.gpus) == 1 and nvml.shutdowns == 1


# --- levels ---

@pytest.mark.parametrize("total, free, level", [
    # 8 GiB card: the absolute thresholds decide (1.5 GiB > 10 %, 4 GiB > 25 %)
    (8 * GIB, int(1.5 * GIB) - 1, "critical"),
    (8 * GIB, int(1.5 * GIB), "tight"),
    (8 * GIB, 4 * GIB - 1, "tight"),
    (8 * GIB, 4 * GIB, "ok"),
    (8 * GIB, 0, "critical"),
    # 80 GiB card: the fractions decide (10 % = 8 GiB, 25 % = 20 GiB)
    (80 * GIB, 8 * GIB - 1, "critical"),
    (80 * GIB, 8 * GIB, "tight"),
    (80 * GIB, 20 * GIB - 1, "tight"),
    (80 * GIB, 20 * GIB, "ok"),
    # the 24 GB card: 10 % = 2.40 GiB, 25 % = 6.00 GiB
    (CARD_24GB, CARD_24GB // 10 - 1, "critical"),
    (CARD_24GB, CARD_24GB // 10 + 1, "tight"),
    (CARD_24GB, CARD_24GB // 4 - 1, "tight"),
    (CARD_24GB, CARD_24GB // 4, "ok"),
])
def test_memory_level_at_the_thresholds(total, free, level):
    assert memory_level(free, total) == level


def test_read_gpus_computes_the_level_from_free_memory():
    cards = [FakeGpu(name=f"card {used}", total=8 * GIB, used=used)
             for used in (int(6.5 * GIB), int(6.5 * GIB) + 1, 4 * GIB, 4 * GIB + 1)]
    report = read_gpus(FakeNVML(gpus=cards))
    assert [gpu.level for gpu in report.gpus] == ["tight", "critical", "ok", "tight"]


# --- text ---

def test_format_report_names_numbers_processes_and_failures():
    second = FakeGpu(name="NVIDIA GeForce RTX 3060", total=12 * GIB, used=11 * GIB, utilization=99, temperature=80,
                     compute=[(BLENDER_PID, 10 * GIB), (os.getpid(), 512 * MIB)],
                     failing={"nvmlDeviceGetTemperature": "Not Supported"})
    text = format_report(read_gpus(FakeNVML(gpus=[rtx_4090(), second])), own_pids={os.getpid()})
    lines = text.splitlines()
    assert lines[0] == "NVIDIA driver 550.54.14, CUDA 12.4"
    assert lines[1] == "GPU 0: NVIDIA GeForce RTX 4090"
    assert lines[2] == "  memory: 5.00 / 23.99 GiB used, 18.99 GiB free (ok)"
    assert lines[3] == "  utilization: 37%, temperature: 61 °C"
    assert lines[4] == "  other processes:"
    assert "/usr/bin/python3" in lines[5] and str(PYTHON_PID) in lines[5] and lines[5].endswith("3.00 GiB")
    assert "/usr/lib/xorg/Xorg" in lines[6] and lines[6].endswith("0.29 GiB")
    assert f"pid {HIDDEN_PID}" in lines[7] and lines[7].endswith("n/a")
    second_block = text[text.index("GPU 1: NVIDIA GeForce RTX 3060"):]
    assert "  memory: 11.00 / 12.00 GiB used, 1.00 GiB free (critical)" in second_block
    assert "  utilization: 99%, temperature: n/a" in second_block
    others, mine = second_block.split("  this trainer:")
    assert "blender" in others and "10.00 GiB" in others and str(os.getpid()) not in others
    assert str(os.getpid()) in mine and "0.50 GiB" in mine
    assert "  could not read temperature: Not Supported" in mine
    assert lines[-1].startswith("CPU: ")


def test_format_report_without_gpus_is_the_message_and_the_host():
    report = read_gpus(FakeNVML(init_error=FakeNVMLError("NVML Shared Library Not Found")))
    lines = format_report(report, own_pids=set()).splitlines()
    assert lines[0] == "no NVIDIA GPU (NVML not available: NVML Shared Library Not Found)"
    assert lines[1].startswith(f"CPU: {report.cpu}, {report.cpu_count} threads, RAM ")
    assert len(lines) == 2


def test_format_report_with_an_idle_gpu_says_no_other_processes():
    text = format_report(read_gpus(FakeNVML(gpus=[rtx_4090(compute=[], graphics=[])])), own_pids=set())
    assert "  other processes: none" in text.splitlines()


# --- host, processes, imports ---

def test_mps_is_reported_only_when_torch_is_already_imported():
    import torch  # tests/conftest.py has imported it already

    report = read_gpus(FakeNVML())
    assert report.mps_available == torch.backends.mps.is_available()


def test_own_process_ids_include_children():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ids = own_process_ids()
        assert os.getpid() in ids and child.pid in ids
        assert os.getppid() not in ids
    finally:
        child.kill()
        child.wait()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the psutil-free path reads /proc (Linux)")
def test_without_psutil_linux_reads_proc_for_children_and_names(monkeypatch):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        monkeypatch.setitem(sys.modules, "psutil", None)
        ids = own_process_ids()
        assert os.getpid() in ids and child.pid in ids and os.getppid() not in ids
        comm = Path(f"/proc/{child.pid}/comm").read_text().strip()
        assert monitor._process_name(FakeNVML(), child.pid) == comm
        assert monitor._process_name(FakeNVML(), PYTHON_PID) == "/usr/bin/python3"
        assert monitor._process_name(FakeNVML(), HIDDEN_PID) == f"pid {HIDDEN_PID}"
    finally:
        child.kill()
        child.wait()


def test_importing_the_monitor_imports_neither_torch_nor_pynvml():
    code = ("import sys; import acestep.gpu, acestep.gpu.monitor as m; "
            "assert 'torch' not in sys.modules and 'pynvml' not in sys.modules, 'imported'; "
            "r = m.read_gpus(); assert 'torch' not in sys.modules, 'read_gpus imported torch'; "
            "print(r.mps_available)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "None"


def test_the_compute_capability_is_read_and_a_failed_query_leaves_it_unknown():
    hopper = FakeGpu(name="NVIDIA H100 80GB HBM3", total=80 * GIB, used=GIB, capability=(9, 0))
    old = rtx_4090(failing={"nvmlDeviceGetCudaComputeCapability": "Not Supported"})
    first, second = read_gpus(FakeNVML(gpus=[hopper, old])).gpus
    assert first.compute_capability == (9, 0)
    assert second.compute_capability is None and "compute capability: Not Supported" in second.errors
