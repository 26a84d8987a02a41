"""item 2: an upstream that drips its answer is cut at the tool's timeout (the whole exchange,
not each read), and a slow target can never starve the others (per-target slots)."""

from __future__ import annotations

import socket
import socketserver
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from examples.demo.tools_server import ToolServer
from sidecar.client import Unavailable
from tests.conftest import audit_lines


class _Drip(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.connections = 0
        super().__init__(("127.0.0.1", 0), _DripHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _DripHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: _Drip = self.server  # type: ignore[assignment]
        server.connections += 1
        self.request.recv(65536)
        self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                             b"Content-Length: 100000\r\n\r\n")  # fmt: skip
        try:
            while not server.stop.wait(0.2):  # one byte every 0.2 s: every read succeeds
                self.request.sendall(b"x")
        except OSError:
            pass  # the sidecar hung up: what we want


@pytest.fixture
def drip():
    server = _Drip()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.stop.set()
    server.shutdown()
    server.server_close()


def _tools(drip_url: str, other_url: str) -> dict:
    get = {"operation": "read", "method": "GET", "path": "/tickets/{id}"}
    return {
        "targets": {
            "tickets": {"base_url": drip_url, "timeout_s": 1.0},
            "kb": {"base_url": other_url},
            "payments": {"base_url": other_url},
            "partner": {"base_url": other_url},
        },
        "tools": {
            "tickets.get": {"target": "tickets", **get},
            "kb.search": {"target": "kb", **get},
        },
    }


def test_item2_a_dripping_upstream_is_cut_at_the_tools_timeout(start_sidecar, drip):
    with ToolServer() as other:
        running = start_sidecar(other.url, **_tools(drip.url, other.url))
        with running.client() as client, pytest.raises(Unavailable) as cut:
            client.call_tool("tickets.get", {"id": "1"}, timeout_s=6)
    # Before: the 1 s timeout bounded each read, and the call ran on to its 6 s deadline.
    assert cut.value.code == "upstream_timeout"
    [record] = audit_lines(running.audit_path)
    assert record["outcome"]["relayed"] is True


def test_item2_one_slow_target_never_starves_another(start_sidecar, drip):
    with ToolServer() as other:
        running = start_sidecar(
            other.url, relay={"max_concurrency": 8}, **_tools(drip.url, other.url)
        )

        def drip_call(i: int) -> str:
            with running.client() as client:
                try:
                    client.call_tool("tickets.get", {"id": str(i)}, timeout_s=8)
                except Unavailable as exc:
                    return exc.code
            return "ok"

        with ThreadPoolExecutor(20) as pool:
            dripping = [pool.submit(drip_call, i) for i in range(20)]
            with running.client() as client:  # meanwhile, another target
                assert client.call_tool("kb.search", {"id": "7"}, timeout_s=3).status == 200
            outcomes = {f.result(timeout=60) for f in dripping}
    assert outcomes <= {"upstream_timeout", "deadline_exceeded"}
    assert [r.path for r in other.received] == ["/tickets/7"]
    assert drip.connections <= 20
    with socket.create_connection(("127.0.0.1", drip.server_address[1]), timeout=5):
        pass  # the drip server is still alive: the sidecar hung up, not the other way round
