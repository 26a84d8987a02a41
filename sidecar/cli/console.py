"""``agent-sidecar console``: the approvals web console over the shared state store."""

from __future__ import annotations

import argparse
import asyncio
import sys

__all__ = ["console"]


def console(args: argparse.Namespace) -> int:
    from sidecar.config import load_settings
    from sidecar.console.server import ConsoleServer
    from sidecar.errors import SidecarError
    from sidecar.logs import configure_logging
    from sidecar.server import serve_until_signalled

    configure_logging(args.log_level)
    settings = load_settings(args.config, overrides=args.set)
    if args.listen:
        from dataclasses import replace

        settings = replace(settings, console=replace(settings.console, listen=args.listen))

    async def run() -> None:
        server = ConsoleServer(settings)
        await serve_until_signalled(
            server, on_started=lambda: print(f"console on {server.address}", flush=True)
        )

    try:
        asyncio.run(run())
    except SidecarError as exc:
        print(f"agent-sidecar console: {exc}", file=sys.stderr)
        return 1
    return 0
