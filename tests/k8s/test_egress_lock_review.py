"""Review findings on the egress lock (issue 31 follow-up), for real: network namespaces, the
real ``egress-lock`` command and node agent, processes under the pod's uids, as
tests/k8s/test_egress_lock.py (whose namespaces and helpers these reuse)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sidecar.egress_lock import EgressLockError, EgressRules, resolvers
from sidecar.egress_lock.netns import apply, fd_path, locked
from sidecar.egress_lock.node import NodeAgent, _start_time
from sidecar.webhook.lock import node_agent_args
from sidecar.webhook.settings import EgressLockTemplate, OpaTemplate, WebhookSettings
from tests.k8s.test_egress_lock import (
    AGENT_SIDECAR,
    OPA_UID,
    OUT,
    OUTSIDE_IP,
    POD_IP,
    PROBE,
    PYTHON,
    SERVER,
    SIDECAR_UID,
    Netns,
    _verify,
    lock_command,
    probe,
    refused,
    sh,
    uid,
)
from tests.k8s.test_egress_lock import netns as netns  # the fixture

# UDP from a chosen local port (as a resolver's or a client's ephemeral port), one answer.
UDP_FROM = r"""
import json, socket, sys
host, port, local = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
try:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", local)); s.settimeout(5); s.connect((host, port)); s.send(b"q")
        out = {"ok": True, "data": s.recv(64).decode()}
except OSError as exc:
    out = {"ok": False, "error": type(exc).__name__ + ": " + str(exc)}
print(json.dumps(out))
"""


def udp_from(ns: Netns, who: list[str], host: str, port: int, local: int) -> dict:
    done = sh("ip", "netns", "exec", ns.pod, *who, PYTHON, "-c", UDP_FROM, host, str(port),
              str(local))  # fmt: skip
    return json.loads(done.stdout)


def test_review_udp_flow_reuse_the_agent_cannot_ride_the_sidecars_flow(netns):
    """HIGH: ``ct state established`` accepted a packet of ANY socket in a flow the kernel
    already tracked: the sidecar sends UDP from port P, then the agent binds P and sends to the
    same address: it left the pod (and got the answer), around the lock."""
    sh("ip", "netns", "exec", netns.pod, *lock_command())
    answer = {"ok": True, "data": "answer:q"}
    assert udp_from(netns, uid(SIDECAR_UID), OUTSIDE_IP, 5353, 40053) == answer
    result = udp_from(netns, uid(1000), OUTSIDE_IP, 5353, 40053)
    assert refused(result), result
    # Again while the flow is fresh in both directions: still the sidecar's alone.
    assert udp_from(netns, uid(SIDECAR_UID), OUTSIDE_IP, 5353, 40053) == answer
    assert refused(udp_from(netns, uid(1000), OUTSIDE_IP, 5353, 40053))
    # Replies still flow: to the sidecar's own connections, and to connections into the pod.
    assert probe(netns, uid(SIDECAR_UID), "tcp", OUTSIDE_IP, 8080) == OUT
    server = netns.start(netns.pod, *uid(1000), PYTHON, "-c", SERVER, POD_IP, "tcp:7000",
                         "udp:7001")  # fmt: skip
    assert server.stdout.readline().strip() == "ready"
    for kind, port, expected in (
        ("tcp", 7000, OUT),
        ("udp", 7001, {"ok": True, "data": "answer:q"}),
    ):
        done = sh("ip", "netns", "exec", netns.outside, PYTHON, "-c", PROBE, kind, POD_IP,
                  str(port))  # fmt: skip
        assert json.loads(done.stdout) == expected, kind


def _node_agent_with(ns: Netns, settings: WebhookSettings) -> subprocess.Popen:
    node = ns.start(ns.node, AGENT_SIDECAR, *node_agent_args(settings), "--interval", "0.2")
    assert node.stdout.readline().strip() == "node agent ready"
    return node


def _locked_by_node(ns: Netns, settings: WebhookSettings) -> subprocess.Popen:
    verify = _verify(ns, "egress-lock-opa")
    node = _node_agent_with(ns, settings)
    out, err = verify.communicate(timeout=60)
    assert verify.returncode == 0 and "egress lock in force" in out, err
    return node


def test_review_opa_uid_reaches_only_its_bundle_service(netns):
    """HIGH: OPA's uid went anywhere, and OPA (unauthenticated, on the pod's loopback) would
    ``http.send`` wherever the agent asked. Now OPA's uid reaches only opa.egress_cidrs on
    opa.egress_ports (the bundle service), as the node agent installs it; the agent, or a
    process of OPA's uid, goes nowhere else."""
    settings = WebhookSettings(
        opa=OpaTemplate(egress_cidrs=(f"{OUTSIDE_IP}/32",), egress_ports=(9443,)),
        egress_lock=EgressLockTemplate(enabled=True),
    )
    _locked_by_node(netns, settings)
    opa = uid(OPA_UID)
    assert probe(netns, opa, "tcp", OUTSIDE_IP, 9443) == OUT  # the bundle service
    for kind, port in (("tcp", 8080), ("tcp", 5432), ("udp", 5353), ("udp", 53)):
        assert refused(probe(netns, opa, kind, OUTSIDE_IP, port)), (kind, port)
    assert refused(probe(netns, uid(1000), "tcp", OUTSIDE_IP, 9443))
    assert probe(netns, uid(SIDECAR_UID), "tcp", OUTSIDE_IP, 8080) == OUT


def test_review_opa_the_prod_node_agent_gives_opa_no_blanket_way_out():
    from tests.support.kustomize import build, find

    if not shutil.which("kubectl"):
        pytest.skip("renders the prod overlay")
    daemonset = find(build("prod"), "DaemonSet", "agent-sidecar-egress-lock")
    [agent] = daemonset["spec"]["template"]["spec"]["containers"]
    args = agent["args"]
    uids = [args[i + 1] for i, a in enumerate(args) if a == "--allow-uid"]
    assert uids == [str(SIDECAR_UID)], args  # OPA's uid is not let out everywhere
    assert f"uids={OPA_UID}" in " ".join(args) and "--allow-dns" not in args


@pytest.mark.parametrize("resolv_conf", ["attacker", "fifo"])
def test_review_dns_the_pods_resolv_conf_is_never_read(netns, resolv_conf):
    """MEDIUM: the node agent read /proc/PID/root/etc/resolv.conf, the pod's own: a pod naming
    an attacker's nameserver (dnsConfig) got port 53 to it, and a FIFO there blocked the agent
    forever. Now the servers are the node agent's arguments (the cluster DNS, 198.18.0.3
    here): the lock arrives, and DNS goes only there, whatever the pod's resolv.conf is."""
    resolv = Path("/etc/netns") / netns.pod / "resolv.conf"
    if resolv_conf == "fifo":
        resolv.unlink()
        os.mkfifo(resolv)
    else:
        resolv.write_text(f"nameserver {OUTSIDE_IP}\n")  # the attacker's resolver
    settings = WebhookSettings(
        egress_lock=EgressLockTemplate(enabled=True, dns="resolvers", dns_servers=("198.18.0.3",))
    )
    node = _locked_by_node(netns, settings)
    assert node.poll() is None
    assert refused(probe(netns, uid(1001), "udp", OUTSIDE_IP, 53))  # not the pod's choice
    rules = sh("ip", "netns", "exec", netns.pod, "nft", "list", "ruleset").stdout
    assert "198.18.0.3" in rules and OUTSIDE_IP not in rules


def test_review_dns_a_resolv_conf_read_by_hand_must_be_a_regular_file(tmp_path):
    """Run by hand (``egress-lock --allow-dns``): a FIFO or a symlink is refused at once."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(EgressLockError, match="not a regular file"):
        resolvers(fifo)
    real = tmp_path / "real"
    real.write_text("nameserver 10.96.0.10\n")
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(EgressLockError, match="cannot read"):
        resolvers(tmp_path / "link")
    assert resolvers(real) == ("10.96.0.10",)


def test_review_dns_resolvers_needs_the_cluster_dns_in_the_settings():
    with pytest.raises(ValueError, match="dns_servers"):
        EgressLockTemplate(enabled=True, dns="resolvers")
    with pytest.raises(ValueError, match="not an IP address"):
        EgressLockTemplate(dns="resolvers", dns_servers=("10.0.0.1; flush ruleset",))
    with pytest.raises(ValueError, match="only with dns: resolvers"):
        EgressLockTemplate(dns_servers=("10.96.0.10",))


def _pod_process(ns: Netns) -> subprocess.Popen:
    proc = ns.start(ns.pod, PYTHON, "-c", "import sys; print('up', flush=True); sys.stdin.read()")
    assert proc.stdout.readline().strip() == "up"
    return proc


def test_review_node_agent_a_reused_pid_is_never_locked(netns):
    """LOW: the node agent checked /proc/PID/ns/net, then later entered it by path: a pid reused
    in between would land the rules in another namespace. Now it opens the namespace once, checks
    the process is still the one it scanned (start time), and enters that fd."""
    agent = NodeAgent(EgressRules((SIDECAR_UID,)))
    own = os.stat("/proc/self/ns/net").st_ino
    pid = str(_pod_process(netns).pid)  # ip netns exec execs python: the same pid
    start = _start_time(Path("/proc"), pid)
    assert start is not None
    # As if the scanned process had exited and its pid been reused: another start time.
    assert agent._lock(pid, str(int(start) + 1), own) is False
    assert not locked(Path(f"/run/netns/{netns.pod}"))
    assert agent._lock(pid, start, own) is True
    assert locked(Path(f"/run/netns/{netns.pod}"))


def test_review_node_agent_enters_the_namespace_by_fd_not_by_pid(netns):
    """The fd keeps naming the pod's namespace after its process is gone (and its pid free for
    reuse): the rules go where the fd points, never to whatever the pid is now."""
    launcher = _pod_process(netns)
    fd = os.open(f"/proc/{launcher.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        launcher.kill()
        launcher.wait()
        assert not Path(f"/proc/{launcher.pid}/ns/net").exists()
        apply(EgressRules((SIDECAR_UID,)), netns=fd_path(fd), force=True)
        assert locked(fd_path(fd))
    finally:
        os.close(fd)
    assert refused(probe(netns, uid(1000), "tcp", OUTSIDE_IP, 8080))
    assert probe(netns, uid(SIDECAR_UID), "tcp", OUTSIDE_IP, 8080) == OUT
    # The node agent's own (host) namespace stayed untouched.
    assert "agent_sidecar_egress" not in sh("nft", "list", "tables").stdout


# OPA's listener as ``--unix-socket-perm=770`` makes it (no opa binary here): bind, chmod.
SOCKET_SERVER = r"""
import os, socket, sys
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); os.chmod(sys.argv[1], 0o770); s.listen(4)
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"hello"); c.close()
"""
SOCKET_CLIENT = r"""
import json, socket, sys
try:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10); s.connect(sys.argv[1]); out = {"ok": True, "data": s.recv(64).decode()}
except OSError as exc:
    out = {"ok": False, "error": type(exc).__name__}
print(json.dumps(out))
"""


def _as(context: dict, groups: list[int]) -> list[str]:
    """setpriv for a container's uid, its runAsGroup and the pod's supplementalGroups."""
    uid_, gid = context["runAsUser"], context.get("runAsGroup", context["runAsUser"])
    extra = [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
    return ["setpriv", f"--reuid={uid_}", f"--regid={gid}", *extra, "--inh-caps=-all"]


def test_review_opa_socket_admits_the_sidecar_and_not_the_agent():
    """HIGH: OPA's API is a 0770 socket of OPA's uid and the sidecar's group, as injected: the
    sidecar connects; the agent, even were the path in its filesystem (it does not mount the
    volume), is refused. Real processes under the injected uids and groups."""
    import tempfile

    from tests.k8s.test_egress_lock import container, golden

    pod = golden("egress-lock-opa")
    groups = pod["spec"]["securityContext"].get("supplementalGroups", [])
    opa, sidecar, agent = (container(pod, n) for n in ("opa", "agent-sidecar", "agent"))
    [addr] = [a for a in opa["args"] if a.startswith("--addr=")]
    name = Path(addr.removeprefix("--addr=unix://")).name
    root = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        root.chmod(0o755)
        volume = root / "opa"
        volume.mkdir(mode=0o777)
        volume.chmod(0o777)  # an emptyDir
        path = str(volume / name)
        server = subprocess.Popen(
            [*_as(opa["securityContext"], groups), PYTHON, "-c", SOCKET_SERVER, path],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert server.stdout.readline().strip() == "ready"

            def connect(context: dict) -> dict:
                done = sh(*_as(context, groups), PYTHON, "-c", SOCKET_CLIENT, path)
                return json.loads(done.stdout)

            assert connect(sidecar["securityContext"]) == {"ok": True, "data": "hello"}
            assert connect(agent["securityContext"]) == {"ok": False, "error": "PermissionError"}
        finally:
            server.kill()
            server.wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)
