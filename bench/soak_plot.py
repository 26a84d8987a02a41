"""The soak's picture: RSS and PSS of the sidecar's process tree, and p50/p99 per second, over
the run, with the warm-up shaded and the two windows the verdict compares marked.

matplotlib is the ``soak`` extra (docs/dependencies.md), installed by ``make soak``; without it
the soak still judges and says there is no plot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from bench.soak_verdict import Window

__all__ = ["plot"]


def plot(
    seconds: Sequence[Window], path: Path, warmup_s: float, window_s: float, title: str
) -> str:
    """Write the PNG to ``path``; returns what was written (or why not)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display here
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (pip install -e '.[soak]', or make soak)"
    t = [w.start_s for w in seconds]
    fig, (mem, lat) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    mem.plot(t, [w.rss_mb for w in seconds], label="RSS (sum over the process tree)")
    mem.plot(t, [w.pss_mb for w in seconds], label="PSS (sum over the process tree)")
    mem.set_ylabel("MB")
    mem.set_ylim(bottom=0)
    lat.plot(t, [w.p50_ms for w in seconds], label="p50 per second")
    lat.plot(t, [w.p99_ms for w in seconds], label="p99 per second")
    lat.set_ylabel("ms from the scheduled time")
    lat.set_xlabel("seconds since the start")
    if any(w.p99_ms > 0 and not math.isnan(w.p99_ms) for w in seconds):
        lat.set_yscale("log")
    end = seconds[-1].end_s if seconds else 0.0
    for axis in (mem, lat):
        axis.axvspan(0, warmup_s, color="0.9", label="warm-up")
        for start in (warmup_s, end - window_s):
            axis.axvspan(start, start + window_s, color="tab:green", alpha=0.08)
        axis.grid(alpha=0.3)
        axis.legend(loc="upper left", fontsize=8)
    mem.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"plot: {path}"
