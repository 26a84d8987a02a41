"""Minimal reproducer for the rego-cpp leak that depends on native library load order.

For the upstream report (rego-cpp / regopy). Needs only ``regopy`` and ``grpcio`` installed;
nothing of agent-sidecar. Runs the same evaluation loop in two fresh processes:

  grpc-first    ctypes.CDLL(<grpc's cygrpc .so>) and only then ``import regopy``
  regopy-first  ``import regopy`` first, then the same CDLL

and prints the RSS growth per evaluation of each. Observed with regopy 1.5.2 (also 1.5.1,
1.4.0) and grpcio 1.85.1 on Debian 12 x86_64: ~26 KB per evaluation grpc-first, 0.00 regopy-first.

    python tools/rego_leak_repro.py [--evals 5000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

CHILD = r"""
import ctypes, glob, importlib.util, os, sys
order, evals = sys.argv[1], int(sys.argv[2])
cygrpc = glob.glob(os.path.join(os.path.dirname(importlib.util.find_spec("grpc").origin),
                                "_cython", "cygrpc*.so"))[0]
if order == "grpc-first":
    ctypes.CDLL(cygrpc)
import regopy
if order == "regopy-first":
    ctypes.CDLL(cygrpc)
interp = regopy.Interpreter()
interp.add_module("p.rego", "package p\nallow if input.user == \"alice\"\n")
interp.set_input_term('{"user": "alice"}')
def rss_kb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024
for _ in range(500):
    interp.query("data.p.allow")
before = rss_kb()
for _ in range(evals):
    interp.query("data.p.allow")
print(f"{order:13} {(rss_kb() - before) / evals:8.2f} KB per evaluation")
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evals", type=int, default=5000, help="evaluations (default: 5000)")
    args = parser.parse_args()
    for order in ("grpc-first", "regopy-first"):
        subprocess.run([sys.executable, "-c", CHILD, order, str(args.evals)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
