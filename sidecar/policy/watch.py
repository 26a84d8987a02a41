"""``policy test --watch``: run again whenever the policy directory's content changes.

The directory is polled (its content hash, the same revision the engine reports), so it works
on any filesystem and in containers without inotify. A directory that does not load while it
is being edited is reported once and watched on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from sidecar.policy.errors import PolicyLoadError
from sidecar.policy.source import load_policy_dir

__all__ = ["watch"]


def _revision(policy_dir: Path) -> str:
    try:
        return load_policy_dir(policy_dir, include_tests=True).revision
    except PolicyLoadError as exc:
        return f"unloadable: {exc}"


def watch(
    policy_dir: Path,
    run: Callable[[], int],
    out: TextIO,
    *,
    interval_s: float = 0.3,
    stop: threading.Event | None = None,
) -> int:
    """Call ``run`` now and after every change until ``stop`` is set (or Ctrl-C); return the
    last run's status."""
    stop = stop or threading.Event()
    status = run()
    last = _revision(policy_dir)
    print(f"watching {policy_dir} for changes (Ctrl-C to stop)", file=out, flush=True)
    try:
        while not stop.wait(interval_s):
            current = _revision(policy_dir)
            if current == last:
                continue
            last = current
            print(f"\n--- {policy_dir} changed, running again ---", file=out, flush=True)
            status = run()
    except KeyboardInterrupt:
        pass
    return status
