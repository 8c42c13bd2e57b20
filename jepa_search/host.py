"""What the search asks of the machine it runs on: its GPUs and cores, the versions installed, a trial's peak
memory, and who a worker process is (so that a rerun can tell a dead worker's trials from a live one's)."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import socket
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# `--trials-per-device auto` on a GPU: as many trials per GPU as the measurements of docs/PERFORMANCE.md found to pay,
# fewer where the machine lacks the cores (a trial keeps one busy, its environment processes and compilation more) or
# the smallest GPU the memory (a model-S trial's tensors and CUDA context)
AUTO_TRIALS_PER_GPU = 4
CORES_PER_TRIAL = 4
GIB_PER_TRIAL = 4


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def auto_trials_per_gpu(gpus: tuple[int, ...]) -> int:
    """Trials at once on each of `gpus`, within the CPU cores and the smallest GPU's memory; 1 without a GPU."""
    if not gpus:
        return 1
    import torch

    by_cores = (os.cpu_count() or 1) // (CORES_PER_TRIAL * len(gpus))
    by_memory = min(torch.cuda.get_device_properties(g).total_memory for g in gpus) // (GIB_PER_TRIAL << 30)
    return max(1, min(AUTO_TRIALS_PER_GPU, by_cores, by_memory))


def trial_device(accelerator: str) -> str:
    """Where a run with `fabric.accelerator=accelerator` trains: `auto` is the GPU when there is one."""
    import torch

    return "cuda" if accelerator in ("cuda", "gpu") or (accelerator == "auto" and torch.cuda.is_available()) else "cpu"


def peak_memory_mib(device: str) -> float:
    """Peak GPU memory allocated by torch since the last `torch.cuda.reset_peak_memory_stats`; on a CPU the
    process's peak resident memory (in-process, over every run this process made)."""
    import torch

    if device == "cuda":
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def versions() -> dict[str, str]:
    """Python, the packages that decide a trial's numbers, and the project's git commit."""
    import importlib.metadata as md

    found = {"python": platform.python_version()}
    for pkg in ("torch", "sheeprl", "optuna", "dm-control", "mujoco"):
        with contextlib.suppress(md.PackageNotFoundError):
            found[pkg] = md.version(pkg)
    with contextlib.suppress(Exception):
        repo = Path(__file__).resolve().parents[1]
        found["git_commit"] = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    return found


def _boot_id() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return ""


def _start_ticks(pid: int) -> tuple[int, str] | None:
    """When process `pid` started (clock ticks since boot) and its state letter; None when there is no such
    process. Linux's /proc; elsewhere (0, "R") for any process that exists."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0, "R"
    # The command name (field 2) may hold spaces and parentheses: the fields after it follow the last ')'
    rest = stat[stat.rindex(")") + 2 :].split()
    return int(rest[19]), rest[0]


@dataclass(frozen=True)
class WorkerId:
    """A search process, told apart from any later one: a pid is reused, a pid with its start time and the boot is
    not."""

    host: str
    pid: int
    started: int
    boot: str

    @classmethod
    def current(cls) -> WorkerId:
        ticks = _start_ticks(os.getpid())
        return cls(socket.gethostname(), os.getpid(), ticks[0] if ticks else 0, _boot_id())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorkerId:
        return cls(str(d["host"]), int(d["pid"]), int(d["started"]), str(d["boot"]))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def is_local(self) -> bool:
        return self.host == socket.gethostname()

    def is_alive(self) -> bool:
        """Whether this process still runs (on this host; a worker elsewhere cannot be asked and counts as alive).
        A zombie (killed, not yet reaped by its parent) is dead."""
        if not self.is_local():
            return True
        if self.boot != _boot_id():
            return False
        found = _start_ticks(self.pid)
        return found is not None and found[0] == self.started and found[1] not in ("Z", "X")
