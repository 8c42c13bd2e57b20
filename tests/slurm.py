"""A real one-node Slurm cluster for the tests: Debian's munge and slurm-wlm daemons, started here with a key and a
configuration of their own in a temporary folder, on free ports, and stopped at the end.

It runs in a container without systemd or cgroups: processes tracked through /proc (`proctrack/linuxproc`), no task
plugin, every daemon as root."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.postgres import free_port

DAEMONS = ("munged", "slurmctld", "slurmd")

CONFIG = """ClusterName=jepa-tests
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=tests Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    """`munged`, `slurmctld` and `slurmd` of this machine; `env` points Slurm's commands at them."""

    def __init__(self) -> None:
        missing = [d for d in DAEMONS if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]
        if missing:
            if os.environ.get("CI"):
                pytest.fail(f"{', '.join(missing)} missing: scripts/setup.sh installs Debian's slurm-wlm and munge")
            pytest.skip("Slurm is not installed (scripts/setup.sh installs slurm-wlm and munge)")
        self.root = Path(tempfile.mkdtemp(prefix="jepa-search-slurm-"))
        for folder in ("munge", "state", "spool"):
            (self.root / folder).mkdir()
        self.config = self.root / "slurm.conf"
        self.config.write_text(
            CONFIG.format(
                host=socket.gethostname(),
                ctld_port=free_port(),
                d_port=free_port(),
                root=self.root,
                cpus=os.cpu_count(),
            )
        )
        self.env = {**os.environ, "SLURM_CONF": str(self.config)}
        self.pids: list[int] = []
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        munge = self.root / "munge"
        (munge / "key").write_bytes(os.urandom(1024))
        os.chmod(munge / "key", 0o400)
        os.chmod(munge, 0o711)  # munged wants its socket's folder reachable by every user
        # --force: the folders are root's, not munge's
        subprocess.run(
            [
                "munged",
                "--force",
                f"--key-file={munge / 'key'}",
                f"--socket={munge / 'socket'}",
                f"--pid-file={munge / 'pid'}",
                f"--log-file={munge / 'log'}",
                f"--seed-file={munge / 'seed'}",
            ],
            check=True,
            capture_output=True,
        )
        self._record(munge / "pid")
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([daemon, "-f", str(self.config)], check=True, capture_output=True, env=self.env)
            self._record(self.root / f"{daemon}.pid")
        deadline = time.monotonic() + 60
        while "idle" not in self.run("sinfo", "-h", "-o", "%T"):
            assert time.monotonic() < deadline, (self.root / "slurmctld.log").read_text()[-2000:]
            time.sleep(0.5)

    def _record(self, pid_file: Path) -> None:
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text().strip():
            assert time.monotonic() < deadline, f"{pid_file} never appeared"
            time.sleep(0.1)
        self.pids.append(int(pid_file.read_text()))

    def run(self, *command: str, cwd: Path | None = None) -> str:
        return subprocess.run(command, check=True, capture_output=True, text=True, env=self.env, cwd=cwd).stdout

    def close(self) -> None:
        for pid in reversed(self.pids):  # the daemons this cluster started, by their id
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        # They save their state as they stop: their folder is removed once they are gone
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in self.pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether the process runs (a daemon's zombie, left to a parent that does not reap it, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False
