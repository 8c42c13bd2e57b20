"""A real PostgreSQL server of Debian's packages for the tests: made fresh (`initdb`) in a temporary folder, on a local
port, and stopped and started again at will (a database outage)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """`initdb` and `pg_ctl` as the tests' user (as `postgres` when that is root: initdb refuses root)."""

    def __init__(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not bins:
            if os.environ.get("CI"):
                pytest.fail("PostgreSQL is not installed: scripts/setup.sh installs Debian's postgresql")
            pytest.skip("PostgreSQL is not installed (scripts/setup.sh installs it)")
        self.bindir = bins[-1].parent
        # Not under pytest's temporary folder: that one is private to this user, and the server may run as `postgres`
        self.root = Path(tempfile.mkdtemp(prefix="jepa-search-pg-"))
        self.data = self.root / "data"
        self.data.mkdir()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.data, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._pg(self.bindir / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres")
        self.start()

    def _pg(self, *command: object) -> None:
        subprocess.run([*self.as_user, *map(str, command)], check=True, capture_output=True)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1"
        self._pg(self.bindir / "pg_ctl", "-D", self.data, "-w", "-l", self.data / "log", "-o", options, "start")

    def stop(self) -> None:
        """A fast shutdown: the clients' connections are cut, as in a restart or a fail-over."""
        self._pg(self.bindir / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def close(self) -> None:
        subprocess.run(
            [*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(self.root, ignore_errors=True)
