"""The ``agent-sidecar`` command (``agent-sidecar COMMAND --help`` lists options and defaults).

  agent-sidecar serve --config FILE [--set KEY=VALUE ...] [--log-level L]
  agent-sidecar health [--addr ADDR] [--timeout S]
  agent-sidecar check --config FILE --input FILE.json
  agent-sidecar explain --config FILE --as SPIFFE_ID [--user TOKEN|-] [--task INTENT]
                        [--attestation A] [--json]
  agent-sidecar egress-lock --allow-uid UID [...] [--allow SPEC] [--allow-dns] [--print] [--force]
  agent-sidecar egress-lock verify [--timeout S] | node-agent --allow-uid UID [...]
  agent-sidecar webhook serve --config FILE --tls-cert F --tls-key F [--listen ADDR]
  agent-sidecar policy test [DIR] [--verbose] [--run REGEX] [--watch]
  agent-sidecar policy eval --input FILE [--policy DIR] [--query Q]
  agent-sidecar policy check [DIR] [--query Q]
  agent-sidecar policy replay --audit FILE --policy DIR [--fail-on-change] [--to-tests FILE]
  agent-sidecar dev workload-api --trust-domain TD --socket PATH --spiffe-id ID [...]
  agent-sidecar audit verify FILE... [--checkpoints F] [--bundle F [--signer ID] | --key F]
                             [--require-sealed] [--max-unsealed-records N] [--max-unsealed-age S]
  agent-sidecar audit show FILE... [--subject ID] [--tool NAME] [--effect E] [--since T]
  agent-sidecar approvals [--admin ADDR | --config FILE] [--as NAME | mTLS options]
                          list [--state S] | show ID | approve ID --reason TEXT
                          | deny ID --reason TEXT | watch

Exit status: 0 success; 1 a policy test failed, `check` found problems, or `replay
--fail-on-change` found a flipped decision; 2 bad usage, configuration or policy (a listener
that cannot be opened included: the message names the setting); 141 the reader of the output
went away (`| head`), said nowhere.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence

from sidecar.errors import SidecarError

__all__ = ["main"]


# What a shell reports for a command its reader stopped reading (128 + SIGPIPE), as `cat` does.
EXIT_BROKEN_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _run(argv)
    except BrokenPipeError:
        # The reader went away (`agent-sidecar ... | head`): stop quietly, like any Unix
        # tool, and keep Python's final flush from printing a traceback of its own.
        _silence_output()
        return EXIT_BROKEN_PIPE


def _run(argv: Sequence[str] | None) -> int:
    from sidecar.cli.parser import build_parser

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SidecarError as exc:
        print(f"agent-sidecar: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _silence_output() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)
