"""The egress lock, for real: the rules the webhook injects (or the node agent applies),
loaded by the real command into a network namespace standing for the pod, then connections,
``setuid`` and raw frames tried by processes shaped like the pod's containers.

Namespaces the test creates (nothing touches the host's network): ``pod`` (loopback and one
end of a veth pair, a default route through it, as a pod has) and ``outside`` (the other end:
a server standing for the internet and the cluster DNS, and a packet sniffer); in the node
mode also ``node`` (where the node agent runs, standing for the node's own namespace). Each
process runs as a container would (``run_as``): the uid of its security context, the
capabilities a container runtime grants by default plus its ``add`` minus its ``drop``,
``no_new_privs`` when ``allowPrivilegeEscalation: false``; ``ip netns exec`` also gives the
pod its own /etc/resolv.conf (/etc/netns/POD/resolv.conf), as the kubelet does.
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TESTDATA = ROOT / "tests/webhook/testdata"
POD_IP, OUTSIDE_IP = "198.18.0.1", "198.18.0.2"  # RFC 2544 test range, inside the namespaces
SIDECAR_UID, OPA_UID, MESH_UID = 65532, 65533, 1337
PYTHON = "/usr/bin/python3"  # readable and runnable by every uid
AGENT_SIDECAR = str(Path(sys.executable).with_name("agent-sidecar"))
# What containerd and CRI-O grant a container by default (root keeps them; others lose them).
DEFAULT_CAPS = [
    "chown",
    "dac_override",
    "fsetid",
    "fowner",
    "mknod",
    "net_raw",
    "setgid",
    "setuid",
    "setfcap",
    "setpcap",
    "net_bind_service",
    "sys_chroot",
    "kill",
    "audit_write",
]

_MISSING = (
    os.geteuid() != 0
    or not all(shutil.which(tool) for tool in ("ip", "nft", "setpriv", "nsenter"))
    or not Path(PYTHON).exists()
)
_WHY = "needs root, ip, nft (Debian nftables), setpriv and nsenter to build network namespaces"
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

# Prints the first frame of EtherType 0x88b5 (IEEE local experimental) the device receives.
SNIFFER = r"""
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))
s.bind((sys.argv[1], 0))
print("ready", flush=True)
s.settimeout(60)
try:
    print(s.recv(2048)[14:].decode(errors="replace"), flush=True)
except OSError as exc:
    print("none: " + str(exc), flush=True)
"""

PROBE = r"""
import json, os, socket, sys
kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if kind == "setuid":  # a root agent becoming the sidecar's uid, then connecting
        os.setuid(65532)
        kind = "tcp"
    if kind == "tcp":
        with socket.create_connection((host, port), timeout=10) as s:
            out = {"ok": True, "data": s.recv(64).decode()}
    elif kind == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(10); s.connect((host, port)); s.send(b"q")
            out = {"ok": True, "data": s.recv(64).decode()}
    elif kind == "frame":  # an Ethernet frame on the pod's device: past every IP hook
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
            s.bind((host, 0))
            s.send(b"\xff" * 6 + b"\x02" + b"\x00" * 5 + b"\x88\xb5" + b"exfiltrated")
            out = {"ok": True, "data": "sent"}
    elif kind == "rawip":  # a raw IP socket: still passes the output hook
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP) as s:
            s.sendto(b"\x00\x35\x16\x2f\x00\x09\x00\x00x", (host, port))
            out = {"ok": True, "data": "sent"}
except OSError as exc:
    out = {"ok": False, "error": type(exc).__name__ + ": " + str(exc)}
print(json.dumps(out))
"""


def sh(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=60, **kwargs)


class Netns:
    """The namespaces of one test; ``pod`` is the pod's, ``dev`` its device."""

    def __init__(self, tag: str) -> None:
        self.pod, self.outside, self.node = f"asl-pod-{tag}", f"asl-out-{tag}", f"asl-node-{tag}"
        self.dev, self.peer = f"vp{tag}", f"vo{tag}"
        self.processes: list[subprocess.Popen] = []

    def start(self, ns: str, *argv: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.processes.append(proc)
        return proc


@pytest.fixture
def netns():
    tag = secrets.token_hex(3)
    ns = Netns(tag)
    resolv = Path("/etc/netns") / ns.pod
    try:
        for name in (ns.pod, ns.outside, ns.node):
            sh("ip", "netns", "add", name)
        sh("ip", "link", "add", ns.dev, "netns", ns.pod, "type", "veth",
           "peer", "name", ns.peer, "netns", ns.outside)  # fmt: skip
        for name, dev, addr in ((ns.pod, ns.dev, POD_IP), (ns.outside, ns.peer, OUTSIDE_IP)):
            sh("ip", "-n", name, "addr", "add", f"{addr}/30", "dev", dev)
            sh("ip", "-n", name, "link", "set", dev, "up")
        for name in (ns.pod, ns.outside, ns.node):
            sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "-n", ns.pod, "route", "add", "default", "via", OUTSIDE_IP)
        resolv.mkdir(parents=True, exist_ok=True)
        (resolv / "resolv.conf").write_text(f"nameserver {OUTSIDE_IP}\noptions ndots:5\n")
        ports = ("tcp:8080", "tcp:9443", "tcp:5432", "tcp:53", "udp:53", "udp:5353")
        for proc in (ns.start(ns.outside, PYTHON, "-c", SERVER, OUTSIDE_IP, *ports),
                     ns.start(ns.pod, PYTHON, "-c", SERVER, "127.0.0.1", "tcp:9000")):  # fmt: skip
            assert proc.stdout.readline().strip() == "ready"
        yield ns
    finally:
        for proc in ns.processes:
            proc.kill()
            proc.wait()
        for name in (ns.pod, ns.outside, ns.node):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        shutil.rmtree(resolv, ignore_errors=True)


def wait_for_line(stream, wanted, timeout_s: float = 60.0) -> str:
    """The first line of ``stream`` for which ``wanted`` holds (fails after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    # a selector, not select(): a long suite's process may hold fds beyond FD_SETSIZE (1024)
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not selector.select(left):
                break
            line = stream.readline()
            if not line:
                break
            if wanted(line):
                return line
    raise AssertionError(f"no such line within {timeout_s}s")


def run_as(context: dict[str, Any], pod_context: dict[str, Any] | None = None) -> list[str]:
    """setpriv arguments that give a process what a container with ``context`` gets."""
    uid = context.get("runAsUser", (pod_context or {}).get("runAsUser"))
    assert uid is not None, "the webhook and the admission policy require a uid"
    caps = context.get("capabilities") or {}
    drop = {c.lower().removeprefix("cap_") for c in caps.get("drop") or []}
    add = {c.lower().removeprefix("cap_") for c in caps.get("add") or []}
    granted = set() if "all" in drop else (set(DEFAULT_CAPS) | add) - drop
    bounding = ",".join(["-all", *(f"+{c}" for c in sorted(granted))])
    argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            f"--bounding-set={bounding}", "--inh-caps=-all"]  # fmt: skip
    if context.get("allowPrivilegeEscalation") is False:
        argv.append("--no-new-privs")
    return argv


def probe(ns: Netns, who: list[str], kind: str, host: str, port: int) -> dict:
    done = sh("ip", "netns", "exec", ns.pod, *who, PYTHON, "-c", PROBE, kind, host, str(port))
    return json.loads(done.stdout)


def uid(n: int) -> list[str]:
    return run_as({"runAsUser": n, "capabilities": {"drop": ["ALL"]}})


def golden(case: str) -> dict[str, Any]:
    return yaml.safe_load((TESTDATA / f"{case}.injected.yaml").read_text())["pod"]


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    spec = pod["spec"]
    [found] = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name]
    return found


def lock_command(case: str = "egress-lock-init") -> list[str]:
    """The egress-lock init container exactly as the webhook injects it (mode init)."""
    return [AGENT_SIDECAR, *container(golden(case), "agent-sidecar-egress-lock")["args"]]


OUT = {"ok": True, "data": "hello"}


def refused(result: dict) -> bool:
    return result["ok"] is False


def test_lock_walkaround_no_agent_shape_gets_out_and_the_sidecar_does(netns):
    """Findings: a root agent called setuid(65532), NET_RAW sent raw frames, DNS was open.
    The agent of egress-lock-init runs as root, hardened by the webhook."""
    pod = golden("egress-lock-init")
    agent = run_as(container(pod, "agent")["securityContext"], pod["spec"].get("securityContext"))
    assert probe(netns, agent, "tcp", OUTSIDE_IP, 8080) == OUT  # before the lock: out
    applied = sh("ip", "netns", "exec", netns.pod, *lock_command())
    assert "egress locked" in applied.stdout

    result = probe(netns, agent, "tcp", OUTSIDE_IP, 8080)
    assert refused(result) and "ConnectionRefused" in result["error"], result
    assert "PermissionError" in probe(netns, agent, "setuid", OUTSIDE_IP, 8080)["error"]
    assert "PermissionError" in probe(netns, agent, "frame", netns.dev, 0)["error"]
    assert "PermissionError" in probe(netns, agent, "rawip", OUTSIDE_IP, 5353)["error"]
    for other in (0, 1000, 1001, OPA_UID):  # OPA's uid: the engine is not opa here
        assert refused(probe(netns, uid(other), "tcp", OUTSIDE_IP, 8080)), other
    # The sidecar reaches its upstream; loopback stays open to the agent.
    assert probe(netns, uid(SIDECAR_UID), "tcp", OUTSIDE_IP, 8080) == OUT
    assert probe(netns, agent, "tcp", "127.0.0.1", 9000) == OUT
    # Chosen explicitly in this case: DNS through the pod's resolvers, and a non-HTTP
    # dependency every process may reach; no other UDP.
    assert probe(netns, agent, "udp", OUTSIDE_IP, 53) == {"ok": True, "data": "answer:q"}
    assert probe(netns, agent, "tcp", OUTSIDE_IP, 5432) == OUT
    assert refused(probe(netns, agent, "udp", OUTSIDE_IP, 5353))
    assert probe(netns, uid(SIDECAR_UID), "udp", OUTSIDE_IP, 5353)["ok"]


def test_mesh_the_proxy_uid_gets_out_only_where_allowed(netns):
    """Finding: the lock had no way to let a mesh proxy out (the pod was cut off)."""
    sh("ip", "netns", "exec", netns.pod, *lock_command())
    proxy = uid(MESH_UID)
    assert probe(netns, proxy, "tcp", OUTSIDE_IP, 8080) == OUT  # allowed: cidrs + port
    assert refused(probe(netns, proxy, "tcp", OUTSIDE_IP, 9443))  # another port
    assert refused(probe(netns, proxy, "udp", OUTSIDE_IP, 5353))
    assert refused(probe(netns, uid(1001), "tcp", OUTSIDE_IP, 8080))  # not for the agent


def test_lock_walkaround_what_admission_refuses_would_get_out(netns):
    """Why those shapes are refused: the rules match uids, so a root agent that keeps
    SETUID, or one that keeps NET_RAW (both a container's defaults), walks around them."""
    sh("ip", "netns", "exec", netns.pod, *lock_command())
    root = run_as({"runAsUser": 0})  # a root container as the runtime makes it
    assert probe(netns, root, "setuid", OUTSIDE_IP, 8080) == OUT
    sniffer = netns.start(netns.outside, PYTHON, "-c", SNIFFER, netns.peer)
    assert sniffer.stdout.readline().strip() == "ready"
    assert probe(netns, root, "frame", netns.dev, 0)["ok"]
    assert sniffer.stdout.readline().strip() == "exfiltrated"
    assert probe(netns, uid(SIDECAR_UID), "tcp", OUTSIDE_IP, 8080) == OUT  # 65532 declared


def _node_agent(netns: Netns) -> subprocess.Popen:
    from tests.support.kustomize import build, find

    daemonset = find(build("prod"), "DaemonSet", "agent-sidecar-egress-lock")
    [agent] = daemonset["spec"]["template"]["spec"]["containers"]
    node = netns.start(netns.node, AGENT_SIDECAR, *agent["args"], "--interval", "0.2")
    assert node.stdout.readline().strip() == "node agent ready"
    return node


def _verify(netns: Netns, case: str, timeout: str | None = None) -> subprocess.Popen:
    verify = container(golden(case), "agent-sidecar-egress-lock")
    args = verify["args"] if timeout is None else [*verify["args"][:-1], timeout]
    who = run_as(verify["securityContext"])
    return netns.start(netns.pod, *who, AGENT_SIDECAR, *args)


@pytest.mark.skipif(not shutil.which("kubectl"), reason="renders the prod overlay")
def test_pod_security_the_node_agent_locks_the_pod_before_anything_starts(netns):
    """Finding: the root NET_ADMIN init container failed Pod Security restricted. In mode
    node the pod's lock container is unprivileged: it waits until the node agent (the prod
    overlay's DaemonSet, its exact arguments) has locked the pod's namespace from outside."""
    verify = _verify(netns, "egress-lock-opa")
    node = _node_agent(netns)
    out, err = verify.communicate(timeout=60)
    assert verify.returncode == 0, err
    assert "egress lock in force" in out
    agent = run_as(container(golden("egress-lock-opa"), "agent")["securityContext"])
    assert "ConnectionRefused" in probe(netns, agent, "tcp", OUTSIDE_IP, 8080)["error"]
    assert refused(probe(netns, agent, "udp", OUTSIDE_IP, 53))  # DNS: none, by default
    assert refused(probe(netns, uid(1000), "tcp", OUTSIDE_IP, 8080))  # OPA's old uid
    # OPA's uid: only its bundle service (the prod overlay's service CIDR), not anywhere.
    assert refused(probe(netns, uid(OPA_UID), "tcp", OUTSIDE_IP, 8080))
    assert probe(netns, uid(SIDECAR_UID), "tcp", OUTSIDE_IP, 8080) == OUT
    # Locked once: a process of the pod faking the verify command line changes nothing.
    rules = sh("ip", "netns", "exec", netns.pod, "nft", "-s", "list", "ruleset").stdout
    fake = netns.start(netns.pod, *agent, PYTHON, "-c", "import sys; sys.stdin.read()",
                       "egress-lock", "verify")  # fmt: skip
    line = wait_for_line(node.stderr, lambda text: f"pid {fake.pid}" in text)
    assert "already locked" in line, line
    assert sh("ip", "netns", "exec", netns.pod, "nft", "-s", "list", "ruleset").stdout == rules
    # The node agent never locks the namespace it runs in (the node's own).
    decoy = netns.start(netns.node, PYTHON, "-c", "import sys; sys.stdin.read()",
                        "egress-lock", "verify")  # fmt: skip
    line = wait_for_line(node.stderr, lambda text: f"pid {decoy.pid} " in text)
    assert "host's network namespace: not locked" in line, line
    tables = sh("ip", "netns", "exec", netns.node, "nft", "list", "tables").stdout
    assert "agent_sidecar_egress" not in tables


def test_pod_security_without_the_node_agent_the_pod_does_not_start(netns):
    verify = _verify(netns, "egress-lock-opa", timeout="2")
    _, err = verify.communicate(timeout=60)
    assert verify.returncode == 2
    assert "not in force" in err and "node agent" in err


def test_verify_a_network_that_answers_for_the_sentinel_cannot_fake_the_lock(netns):
    """A firewall resetting (or a host accepting) connections to unknown addresses would look
    like the lock to a naive check; only the lock's redirect lands on the pod's loopback."""
    sh("ip", "-n", netns.outside, "addr", "add", "192.0.2.1/32", "dev", netns.peer)
    accept = netns.start(netns.outside, PYTHON, "-c", SERVER, "192.0.2.1", "tcp:9")
    assert accept.stdout.readline().strip() == "ready"
    verify = _verify(netns, "egress-lock-opa", timeout="2")
    _, err = verify.communicate(timeout=60)
    assert verify.returncode == 2 and "not in force" in err


def test_applying_twice_leaves_one_table_and_the_same_rules(netns):
    sh("ip", "netns", "exec", netns.pod, *lock_command())
    first = sh("ip", "netns", "exec", netns.pod, "nft", "-s", "list", "ruleset").stdout
    sh("ip", "netns", "exec", netns.pod, *lock_command())
    second = sh("ip", "netns", "exec", netns.pod, "nft", "-s", "list", "ruleset").stdout
    assert first == second and first.count("table inet agent_sidecar_egress") == 1
    assert refused(probe(netns, uid(1001), "tcp", OUTSIDE_IP, 8080))


def test_without_net_admin_the_lock_fails_loudly(netns):
    """A pod whose init container lacks NET_ADMIN must not start as if it were locked: root,
    as in the container, but without the capability (dropped from the bounding set)."""
    done = subprocess.run(
        ["ip", "netns", "exec", netns.pod, "setpriv", "--bounding-set=-net_admin",
         "--inh-caps=-net_admin", *lock_command()],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "NET_ADMIN" in done.stderr
    assert probe(netns, uid(1001), "tcp", OUTSIDE_IP, 8080) == OUT  # nothing half-applied


def test_item13_by_hand_on_the_host_it_refuses_without_force():
    """Issue 32 item 13: run as root on a workstation it locked the host's network. Run here
    in the host's namespace, without NET_ADMIN so that nothing could be changed anyway."""
    done = subprocess.run(
        ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin",
         AGENT_SIDECAR, "egress-lock", "--allow-uid", "65532"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "host's network namespace" in done.stderr and "--force" in done.stderr


def test_item13_a_namespace_with_other_rules_is_not_a_fresh_pod_unless_forced(netns):
    sh("ip", "netns", "exec", netns.pod, "nft", "add", "table", "ip", "filter")  # a firewall
    command = [AGENT_SIDECAR, "egress-lock", "--allow-uid", "65532"]
    done = subprocess.run(
        ["ip", "netns", "exec", netns.pod, *command],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "not a fresh pod's" in done.stderr, done.stderr
    assert "ip filter" in done.stderr and "--force" in done.stderr
    assert probe(netns, uid(1001), "tcp", OUTSIDE_IP, 8080) == OUT  # untouched
    sh("ip", "netns", "exec", netns.pod, *command, "--force")
    assert refused(probe(netns, uid(1001), "tcp", OUTSIDE_IP, 8080))


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_verify_a_timeout_that_would_never_end_is_refused(value):
    for mode, option in (("verify", "--timeout"), ("node-agent", "--interval")):
        extra = ["--allow-uid", "65532"] if mode == "node-agent" else []
        done = subprocess.run(
            [AGENT_SIDECAR, "egress-lock", mode, *extra, option, value],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 2 and f"{option} must be" in done.stderr, done.stderr


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


@pytest.mark.parametrize(
    "spec",
    [
        "", "cidrs=", "cidrs=10.0.0.0/8;cidrs=10.0.0.0/8", "cidrs=10.0.0.1/8",
        "cidrs=10.0.0.0/8 } accept; flush ruleset", "cidrs=10.0.0.0/8;ports=0",
        "cidrs=10.0.0.0/8;ports=65536", "cidrs=10.0.0.0/8;ports=http", "cidrs=10.0.0.0/8;uids=-1",
        "cidrs=10.0.0.0/8;who=1", "cidrs=10.0.0.0/8;ports=" + ",".join(["1"] * 65),
    ],
)  # fmt: skip
def test_mesh_a_malformed_allow_is_a_clear_error_never_a_rule(spec):
    from sidecar.egress_lock import Allow, EgressLockError

    with pytest.raises(EgressLockError):
        Allow.parse(spec)


def test_mesh_an_allow_round_trips_and_renders_per_family():
    from sidecar.egress_lock import Allow

    allow = Allow.parse("cidrs=10.0.0.0/8,fd00::/8;ports=443,8443;uids=1337")
    assert Allow.parse(allow.to_arg()) == allow
    assert allow.render() == [
        "    meta skuid { 1337 } ip daddr { 10.0.0.0/8 } meta l4proto { tcp, udp } "
        "th dport { 443, 8443 } accept",
        "    meta skuid { 1337 } ip6 daddr { fd00::/8 } meta l4proto { tcp, udp } "
        "th dport { 443, 8443 } accept",
    ]
