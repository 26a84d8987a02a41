"""Claiming the sidecar's listeners: a clear error naming the setting, never a silent takeover.

Two mistakes a new user makes on day one, and what they used to cost:

- a second ``serve`` on the same unix socket unlinked the first one's socket and bound its own,
  so the first sidecar kept running, unreachable (and the second deleted the path on exit);
- a port already in use (two sidecars on the default metrics port) ended in a traceback.

:func:`claim_unix_socket` holds an exclusive ``flock`` on ``PATH.lock`` beside the socket for
the life of the process (released by the kernel when it dies, so a crash leaves nothing that
blocks a restart) and refuses a path that a live process still accepts connections on. A
socket file nobody answers on is stale and replaced. :func:`listening` turns the ``OSError``
of a bind into a :class:`ListenError` naming the setting; the CLI prints it and exits 2.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.config import ConfigError

__all__ = ["ListenError", "UnixSocketClaim", "claim_unix_socket", "listening"]

# How long the liveness probe of an existing socket file waits for a connection.
PROBE_TIMEOUT_S = 1.0


class ListenError(ConfigError, OSError):
    """A configured listener cannot be opened; the message names the setting and address.
    A ConfigError (the CLI's exit 2), and still the OSError a failed bind always was."""


@dataclass
class UnixSocketClaim:
    """This process's claim on a unix socket path: the held lock, released by :meth:`release`
    (or by the kernel when the process exits)."""

    path: Path
    setting: str
    _fd: int | None = field(default=None, repr=False)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def claim_unix_socket(path: Path, setting: str) -> UnixSocketClaim:
    """Claim ``path`` for this process to bind: lock it, refuse it while a live process serves
    on it (:class:`ListenError`), remove a stale socket file. Bind while holding the claim."""
    path.parent.mkdir(parents=True, exist_ok=True)
    where = f"{setting}: unix://{path}"
    try:
        fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ListenError(f"{where}: cannot create its lock file: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise ListenError(
                f"{where}: another agent-sidecar is serving on this socket; stop it first, "
                f"or give this one another {setting}"
            ) from None
        raise ListenError(f"{where}: cannot lock {lock_path(path)}: {exc.strerror}") from exc
    claim = UnixSocketClaim(path, setting, fd)
    try:
        if path.exists() or path.is_symlink():
            if not path.is_socket():
                raise ListenError(f"{where}: the path exists and is not a socket; remove it")
            if _answers(path):
                raise ListenError(
                    f"{where}: a live process accepts connections on this socket; stop it "
                    f"first, or give this one another {setting}"
                )
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # stale: left by a process that is gone
    except BaseException:
        claim.release()
        raise
    return claim


def _answers(path: Path) -> bool:
    """Whether something accepts connections on the unix socket at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT_S)
    try:
        probe.connect(str(path))
    except OSError as exc:
        # Refused (or gone): nobody listens. Anything else (EACCES, a timeout on a full
        # backlog) means a process may well be there: fail closed, do not replace it.
        return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)
    else:
        return True
    finally:
        probe.close()


@contextlib.contextmanager
def listening(setting: str, address: str) -> Iterator[None]:
    """Run a bind; its failure becomes a :class:`ListenError` naming ``setting``."""
    try:
        yield
    except ListenError:
        raise
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and "bind" not in str(exc):
            raise  # not a listener failure: not this function's to rename
        # gRPC says only "Failed to bind": ask the kernel the same question for the reason.
        cause = exc if isinstance(exc, OSError) and exc.strerror else _bind_error(address)
        reason = cause.strerror if cause is not None and cause.strerror else str(exc)
        hint = ""
        if cause is not None and cause.errno == errno.EADDRINUSE:
            hint = " (another process, perhaps another agent-sidecar, holds it)"
        raise ListenError(f"{setting}: cannot listen on {address}: {reason}{hint}") from exc


def _bind_error(address: str) -> OSError | None:
    """The OSError binding ``HOST:PORT`` gives now, if any (None: it binds, or not TCP)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or address.startswith("unix:"):
        return None
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host or "0.0.0.0", int(port)))  # noqa: S104 - the address as configured
    except OSError as exc:
        return exc
    return None
