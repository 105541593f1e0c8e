"""A private PostgreSQL cluster on a free port, for tests that stop and start the
database server without touching the machine's shared one."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

import psycopg

from tests.support.stack import free_port

START_SECONDS = 60


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin")
    return Path(found[-1]).parent


class PostgresServer:
    """initdb, pg_ctl start/stop. PostgreSQL refuses to run as root, so as root the cluster
    belongs to the `postgres` OS user and lives outside pytest's private (0700) tmp dirs."""

    def __init__(self) -> None:
        self.port = free_port()
        self._bin = _bin_dir()
        self._root = Path(tempfile.mkdtemp(prefix="interlock-pg-"))
        self._data = self._root / "data"
        self.log_path = self._root / "postgres.log"
        self._as_owner: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self._root, "postgres", "postgres")
            self._as_owner = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self._as_owner, *args], capture_output=True, text=True, check=False, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stdout}{done.stderr}")

    def _ctl(self, *args: str) -> None:
        self._run(str(self._bin / "pg_ctl"), "-D", str(self._data), *args)

    def init(self) -> Self:
        # --no-sync and fsync=off: a test cluster, thrown away afterwards; speed over durability.
        self._run(str(self._bin / "initdb"), "-D", str(self._data), "-A", "trust", "-U", "postgres", "--no-sync")
        return self

    def start(self) -> Self:
        options = f"-p {self.port} -k {self._root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("-o", options, "-l", str(self.log_path), "-w", "-t", str(START_SECONDS), "start")
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return self
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        """A fast shutdown: sessions are terminated, as when the database goes away."""
        self._ctl("-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        if (self._data / "postmaster.pid").exists():
            self._ctl("-m", "immediate", "-w", "stop")
        shutil.rmtree(self._root, ignore_errors=True)
