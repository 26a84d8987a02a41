"""S12: a policy deciding with ``%`` never serves on the embedded engine: ``serve`` refuses to
start with the finding (file, line, the ``70 % 7`` example, the way out), ``policy check``
exits non-zero, and with ``policy.engine: opa`` the same policy decides, right, through the
sidecar's OPA client against OPA's own engine."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sidecar.policy.opa import OpaEngine
from tests.conftest import REGO
from tests.support.cli import cli

QUERY = "data.p.allow"
BODY = "allow if input.action.arguments.n % 7 == 0"


def _policy(root: Path) -> Path:
    (root / "p").mkdir(parents=True)
    (root / "p" / "p.rego").write_text(f"package p\n\nimport rego.v1\n\n{BODY}\n")
    return root


def test_s12_serve_refuses_a_policy_using_rem(tmp_path):
    policy = _policy(tmp_path / "policy")
    (tmp_path / "c.yaml").write_text(
        f"server:\n  listen: ['unix://{tmp_path}/agent.sock']\nadmin:\n  listen: ''\n"
        f"audit:\n  path: {tmp_path}/audit.log\npolicy:\n  dir: {policy}\n  query: {QUERY}\n"
    )
    proc = cli("serve", "--config", str(tmp_path / "c.yaml"), timeout=60)
    assert proc.returncode != 0
    assert f"{policy}/p/p.rego:5: divergent-arithmetic: `%`" in proc.stderr, proc.stderr
    assert "`70 % 7` is 2 there, 0 on OPA" in proc.stderr
    assert "policy.engine: opa" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "agent.sock").exists()


def test_s12_policy_check_exits_non_zero(tmp_path):
    policy = _policy(tmp_path / "policy")
    proc = cli("policy", "check", str(policy), "--query", QUERY)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{policy}/p/p.rego:5: divergent-arithmetic:" in proc.stdout, proc.stdout


def test_s12_policy_check_of_the_shipped_policy_is_clean():
    proc = cli("policy", "check", str(REGO))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture
def opa_server(tmp_path) -> Iterator[str]:
    """A loopback HTTP server answering OPA's Data API with OPA's own Go engine."""
    bindings = pytest.importorskip("opa_bindings", reason="OPA's Go engine is not installed")
    engine = bindings.OpaEngine()
    engine.add_policy("p/p.rego", f"package p\n\nimport rego.v1\n\n{BODY}\n")
    engine.add_data({})
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            doc = json.loads(self.rfile.read(length))["input"]
            with lock:
                rows = engine.eval_query(f"__x = {QUERY}", doc)
            answer = {"result": rows[0]["__x"]} if rows else {}
            body = json.dumps({**answer, "decision_id": "d-1"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        engine.close()


def test_s12_policy_engine_opa_still_decides_rem(opa_server):
    engine = OpaEngine(opa_server, QUERY, workers=1)
    try:
        for n, want in [(70, True), (30, False), (71, False), (700, True), (7 * 10**6, True)]:
            result = engine.evaluate_sync({"action": {"arguments": {"n": n}}})
            assert (result.defined and result.value is True) == want, n
    finally:
        engine.close()
