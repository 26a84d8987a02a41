"""HTTP over a unix socket with the standard library (for the AuthZEN socket)."""

from __future__ import annotations

import http.client
import socket

__all__ = ["UnixConnection"]


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 30) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self._path)
