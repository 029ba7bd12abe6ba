"""A throwaway PostgreSQL server on loopback from the machine's own binaries
(``/usr/lib/postgresql/*/bin``), as the Rust tests start one
(``tests/all/support/postgres.rs``): initdb refuses to run as root, so as
root the tools run as the package's ``postgres`` account."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from typing import Optional


def binaries() -> Optional[str]:
    """The newest installed server's bin directory, if any."""
    found = sorted(
        (d for d in glob.glob("/usr/lib/postgresql/*/bin") if os.path.exists(os.path.join(d, "initdb"))),
        key=lambda d: int(d.split("/")[-2]) if d.split("/")[-2].isdigit() else 0,
    )
    return found[-1] if found else None


class Cluster:
    def __init__(self, bin_dir: str):
        self.bin = bin_dir
        self.as_postgres = os.geteuid() == 0
        # Not pytest's tmp_path: its parents are 0700 root, which the postgres account cannot enter.
        self.data = tempfile.mkdtemp(prefix="rekey-py-pg")
        if self.as_postgres:
            shutil.chown(self.data, "postgres", "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c max_connections=60"
        self._run("pg_ctl", "-D", self.data, "-o", options, "-l", f"{self.data}/server.log", "-w", "start")

    def database(self, name: str) -> str:
        """A fresh database; its URL."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        subprocess.run(self._cmd("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop"), capture_output=True)
        shutil.rmtree(self.data, ignore_errors=True)

    def _cmd(self, tool: str, *args: str) -> list[str]:
        exe = os.path.join(self.bin, tool)
        return ["runuser", "-u", "postgres", "--", exe, *args] if self.as_postgres else [exe, *args]

    def _run(self, tool: str, *args: str) -> None:
        out = subprocess.run(self._cmd(tool, *args), capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"{tool} failed ({out.returncode}):\n{out.stdout}{out.stderr}")
