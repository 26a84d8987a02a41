"""The egress lock, for real: the rules the webhook injects, applied by the real command in a
network namespace standing for the pod, then connections tried as different users.

Two namespaces the test creates (nothing touches the host's network): ``pod`` (loopback and
one end of a veth pair) and ``outside`` (the other end, a server standing for the internet
and the cluster DNS). The injected init container's exact arguments run under
``ip netns exec pod``, which also gives the pod its own /etc/resolv.conf
(/etc/netns/POD/resolv.conf), as the kubelet does. Then processes under the agent's uid,
the sidecar's and OPA's try to connect.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests/webhook/testdata/egress-lock-opa.injected.yaml"
POD_IP, OUTSIDE_IP = "198.18.0.1", "198.18.0.2"  # RFC 2544 test range, inside the namespaces
AGENT_UID, SIDECAR_UID, OPA_UID = 1001, 65532, 1000
PYTHON = "/usr/bin/python3"  # readable and runnable by every uid

_MISSING = (
    os.geteuid() != 0
    or not all(shutil.which(tool) for tool in ("ip", "nft", "setpriv"))
    or not Path(PYTHON).exists()
)
_WHY = "needs root, ip, nft (Debian nftables) and setpriv to build network namespaces"
if _MISSING and os.environ.get("AGENT_SIDECAR_REQUIRE_NETNS"):  # CI: never skip silently
    raise RuntimeError(f"AGENT_SIDECAR_REQUIRE_NETNS is set, but the egress-lock tests {_WHY}")
pytestmark = pytest.mark.skipif(_MISSING, reason=_WHY)

SERVER = r"""
import socket, sys, threading
host = sys.argv[1]
def tcp(port, reply):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port)); s.listen(16)
    def loop():
        while True:
            c, _ = s.accept(); c.sendall(reply); c.close()
    threading.Thread(target=loop, daemon=True).start()
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((host, port))
    def loop():
        while True:
            data, peer = s.recvfrom(512); s.sendto(b"answer:" + data, peer)
    threading.Thread(target=loop, daemon=True).start()
for port in sys.argv[2:]:
    kind, number = port.split(":")
    tcp(int(number), b"hello") if kind == "tcp" else udp(int(number))
print("ready", flush=True)
sys.stdin.read()
"""

PROBE = r"""
import json, socket, sys
kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if kind == "tcp":
        with socket.create_connection((host, port), timeout=10) as s:
            out = {"ok": True, "data": s.recv(64).decode()}
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(10); s.connect((host, port)); s.send(b"q")
            out = {"ok": True, "data": s.recv(64).decode()}
except OSError as exc:
    out = {"ok": False, "error": type(exc).__name__ + ": " + str(exc)}
print(json.dumps(out))
"""


def sh(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=60, **kwargs)


@pytest.fixture
def namespaces():
    tag = secrets.token_hex(3)
    pod, outside = f"asl-pod-{tag}", f"asl-out-{tag}"
    resolv = Path("/etc/netns") / pod
    servers: list[subprocess.Popen] = []
    try:
        sh("ip", "netns", "add", pod)
        sh("ip", "netns", "add", outside)
        sh("ip", "link", "add", f"vp{tag}", "netns", pod, "type", "veth",
           "peer", "name", f"vo{tag}", "netns", outside)  # fmt: skip
        for ns, dev, addr in ((pod, f"vp{tag}", POD_IP), (outside, f"vo{tag}", OUTSIDE_IP)):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        resolv.mkdir(parents=True, exist_ok=True)
        (resolv / "resolv.conf").write_text(f"nameserver {OUTSIDE_IP}\noptions ndots:5\n")

        def serve(ns: str, host: str, *ports: str) -> None:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, PYTHON, "-c", SERVER, host, *ports],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            servers.append(proc)
            assert proc.stdout.readline().strip() == "ready"

        serve(outside, OUTSIDE_IP, "tcp:8080", "tcp:53", "udp:53", "udp:5353")
        serve(pod, "127.0.0.1", "tcp:9000")
        yield pod
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
        for ns in (pod, outside):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        shutil.rmtree(resolv, ignore_errors=True)


def probe(pod: str, uid: int, kind: str, host: str, port: int) -> dict:
    done = sh(
        "ip", "netns", "exec", pod, "setpriv", f"--reuid={uid}", f"--regid={uid}",
        "--clear-groups", PYTHON, "-c", PROBE, kind, host, str(port),
    )  # fmt: skip
    return json.loads(done.stdout)


def lock_command() -> list[str]:
    """The egress-lock init container exactly as the webhook injects it."""
    pod = yaml.safe_load(GOLDEN.read_text())["pod"]
    [lock] = [c for c in pod["spec"]["initContainers"] if c["name"] == "agent-sidecar-egress-lock"]
    agent_sidecar = Path(sys.executable).with_name("agent-sidecar")
    return [str(agent_sidecar), *lock["args"]]


def test_only_the_sidecar_users_leave_the_pod(namespaces):
    pod = namespaces
    # Before the lock: the agent reaches the outside directly (what the lock is for).
    assert probe(pod, AGENT_UID, "tcp", OUTSIDE_IP, 8080) == {"ok": True, "data": "hello"}
    applied = sh("ip", "netns", "exec", pod, *lock_command())
    assert "egress locked" in applied.stdout

    refused = probe(pod, AGENT_UID, "tcp", OUTSIDE_IP, 8080)
    assert refused["ok"] is False and "ConnectionRefused" in refused["error"], refused
    assert probe(pod, 0, "tcp", OUTSIDE_IP, 8080)["ok"] is False  # root in the pod too
    assert probe(pod, SIDECAR_UID, "tcp", OUTSIDE_IP, 8080) == {"ok": True, "data": "hello"}
    assert probe(pod, OPA_UID, "tcp", OUTSIDE_IP, 8080) == {"ok": True, "data": "hello"}
    # Loopback (the sidecar's front door, or anything in the pod) stays open to the agent.
    assert probe(pod, AGENT_UID, "tcp", "127.0.0.1", 9000) == {"ok": True, "data": "hello"}
    # DNS to the pod's nameserver only (allow_dns), over UDP and TCP; no other UDP.
    assert probe(pod, AGENT_UID, "udp", OUTSIDE_IP, 53) == {"ok": True, "data": "answer:q"}
    assert probe(pod, AGENT_UID, "tcp", OUTSIDE_IP, 53) == {"ok": True, "data": "hello"}
    other_udp = probe(pod, AGENT_UID, "udp", OUTSIDE_IP, 5353)
    assert other_udp["ok"] is False, other_udp
    assert probe(pod, SIDECAR_UID, "udp", OUTSIDE_IP, 5353) == {"ok": True, "data": "answer:q"}


def test_applying_twice_leaves_one_table_and_the_same_rules(namespaces):
    pod = namespaces
    sh("ip", "netns", "exec", pod, *lock_command())
    first = sh("ip", "netns", "exec", pod, "nft", "-s", "list", "ruleset").stdout  # no counters
    sh("ip", "netns", "exec", pod, *lock_command())
    second = sh("ip", "netns", "exec", pod, "nft", "-s", "list", "ruleset").stdout
    assert first == second and first.count("table inet agent_sidecar_egress") == 1
    assert probe(pod, AGENT_UID, "tcp", OUTSIDE_IP, 8080)["ok"] is False


def test_without_net_admin_the_lock_fails_loudly(namespaces):
    """A pod whose init container lacks NET_ADMIN must not start as if it were locked: root,
    as in the container, but without the capability (dropped from the bounding set)."""
    pod = namespaces
    done = subprocess.run(
        ["ip", "netns", "exec", pod, "setpriv", "--bounding-set=-net_admin",
         "--inh-caps=-net_admin", *lock_command()],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "refused the rules" in done.stderr and "NET_ADMIN" in done.stderr
    assert probe(pod, AGENT_UID, "tcp", OUTSIDE_IP, 8080)["ok"] is True  # nothing half-applied


def test_dns_needs_a_nameserver_to_allow(tmp_path):
    from sidecar.egress_lock import EgressLockError, EgressRules, resolvers

    (tmp_path / "resolv.conf").write_text("search cluster.local\noptions ndots:5\n")
    with pytest.raises(EgressLockError, match="no nameserver line"):
        resolvers(tmp_path / "resolv.conf")
    (tmp_path / "resolv.conf").write_text("nameserver 10.96.0.10\nnameserver fe80::1%eth0\n")
    assert resolvers(tmp_path / "resolv.conf") == ("10.96.0.10", "fe80::1")
    for bad in ((), (-1,), (2**32 - 1,), (True,)):
        with pytest.raises(EgressLockError):
            EgressRules(bad)
    with pytest.raises(EgressLockError, match="not an IP address"):
        EgressRules((65532,), ("10.0.0.1; flush ruleset",))
