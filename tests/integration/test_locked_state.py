"""item 7: a state database locked by another process stalls only the calls that need it
(they fail with state_unavailable within their deadline), never the event loop: calls that
need no state keep being decided, and the sidecar recovers when the lock goes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import grpc
import pytest

from sidecar.client import Unavailable

HOLD_LOCK = textwrap.dedent(
    """
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")  # a writer that never finishes
    print("locked", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    conn.execute("ROLLBACK")
    """
)


def test_item7_a_locked_state_database_stalls_only_the_calls_that_need_it(sidecar, tools):
    db = sidecar.sidecar.tasks._db.path
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with sidecar.client(timeout_s=3) as client:
            # The sweeper runs every second against the locked database: with state work on
            # the event loop each sweep held it for the 5 s busy wait, and these missed 3 s.
            for i in range(10):
                assert client.check("tickets.get", {"id": str(i)}).effect == "allow"
                assert client.call_tool("tickets.get", {"id": str(i)}).status == 200
            with pytest.raises(Unavailable) as refused:
                client.start_task("needs the database")
            assert refused.value.code == "state_unavailable"
            assert refused.value.status == grpc.StatusCode.UNAVAILABLE
    finally:
        if holder.stdin is not None:
            holder.stdin.close()
        holder.wait(10)
    with sidecar.client(timeout_s=10) as client:  # the lock is gone: it works again
        assert client.start_task("after the lock").task_id
