"""A real, throwaway PostgreSQL server for tests (Debian's ``postgresql`` package).

``initdb`` refuses root, so as root the server runs as the ``postgres`` user in a directory
made for it. Password authentication (SCRAM) on loopback TCP, like a real deployment: the
tests can check the password never shows up anywhere. ``stop()`` and ``start()`` again on the
same port make an outage.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

__all__ = ["PG_BIN", "PostgresServer", "missing_reason"]

PG_BIN = Path(os.environ.get("AGENT_SIDECAR_PG_BIN", "/usr/lib/postgresql/15/bin"))


def missing_reason() -> str:
    """Why a PostgreSQL server cannot be started here ("" when it can)."""
    if not (PG_BIN / "initdb").exists():
        return f"no PostgreSQL binaries in {PG_BIN} (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run initdb as"
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="agent-sidecar-pg-"))
        self.data = self.root / "data"
        self.password = secrets.token_urlsafe(18)
        self.port = _free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._as_postgres = os.geteuid() == 0
        pwfile = self.root / "pw"
        pwfile.write_text(self.password)
        if self._as_postgres:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        self._run(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8",
            "--auth=scram-sha-256", f"--pwfile={pwfile}", "--no-sync", "--no-instructions",
        )  # fmt: skip
        pwfile.unlink()

    def _command(self, *argv: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if self._as_postgres else list(argv)

    def _run(self, *argv: str) -> None:
        subprocess.run(self._command(*argv), check=True, capture_output=True, timeout=60)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> PostgresServer:
        self._proc = subprocess.Popen(
            self._command(
                str(PG_BIN / "postgres"), "-D", str(self.data), "-p", str(self.port),
                "-k", str(self.root), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                "-c", "full_page_writes=off", "-c", "max_connections=300",
            ),
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "server.log", "ab"),  # noqa: SIM115 (the server holds it)
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2):
                    return self
            except psycopg.OperationalError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.root / "server.log").read_text(errors="replace")
                    raise RuntimeError(f"PostgreSQL did not start:\n{log[-2000:]}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Fast shutdown (clients disconnected), waiting until it has exited."""
        if self._proc is not None and self._proc.poll() is None:
            # The postmaster itself (runuser does not pass the signal on): its pid file.
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGINT)
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def create_database(self, name: str) -> str:
        """A fresh database; its DSN."""
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def close(self) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.root)
