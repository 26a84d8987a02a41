"""``egress-lock verify``: hold the pod until the node agent's rules are in force.

Runs unprivileged as the pod's first init container (Pod Security ``restricted``), so no
container of the pod starts before the lock. Reading nftables needs ``NET_ADMIN``, so it
checks the lock by an effect only the lock's table has: it listens on the pod's loopback
(``VERIFY_PORT``), connects to a sentinel address (TEST-NET, never routed anywhere) and
expects that very connection (a random token sent through it) to arrive on its own listener,
which only the table's redirect can do; a network that answers for unknown addresses (a
firewall's reset) cannot fake it. The table is loaded atomically, so the redirect proves
every rule of it is there. Its command line is also what the node agent looks for.
"""

from __future__ import annotations

import secrets
import socket
import time

from sidecar.egress_lock.rules import SENTINELS, VERIFY_PORT, EgressLockError

__all__ = ["locked", "wait_until_locked"]


def _through_sentinel(host: str, port: int, timeout_s: float) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    loopback = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    token = secrets.token_bytes(16)
    try:
        with socket.socket(family, socket.SOCK_STREAM) as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((loopback, VERIFY_PORT))
            listener.listen(4)
            listener.settimeout(timeout_s)
            with socket.create_connection((host, port), timeout=timeout_s) as out:
                out.sendall(token)
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(timeout_s)
                    received = b""
                    while len(received) < len(token):
                        chunk = conn.recv(len(token) - len(received))
                        if not chunk:
                            break
                        received += chunk
                    return received == token
    except OSError:  # no route (a v4- or v6-only pod), refused, reset, timeout: not locked
        return False


def locked(timeout_s: float = 2.0) -> bool:
    """Whether this network namespace's egress is locked (the sentinel lands on loopback)."""
    return any(_through_sentinel(host, port, timeout_s) for host, port in SENTINELS)


def wait_until_locked(timeout_s: float, poll_s: float = 0.5) -> float:
    """Poll until locked; return the seconds waited, or raise once ``timeout_s`` has passed."""
    start = time.monotonic()
    while True:
        if locked():
            return time.monotonic() - start
        if time.monotonic() - start >= timeout_s:
            raise EgressLockError(
                f"the egress lock is not in force in this pod after {timeout_s:g}s: is the "
                "agent-sidecar node agent (DaemonSet agent-sidecar-egress-lock, namespace "
                "agent-sidecar-node) running on this node? The pod must not start unlocked"
            )
        time.sleep(poll_s)
