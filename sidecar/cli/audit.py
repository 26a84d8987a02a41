"""``agent-sidecar audit``: verify a log's chain and checkpoints; show who called what."""

from __future__ import annotations

import argparse
from pathlib import Path

from sidecar.errors import SidecarError

__all__ = ["audit_show", "audit_verify"]


def _audit_files(paths: list[Path]) -> list[Path]:
    from sidecar.audit import rotated_files

    files: list[Path] = []
    for path in paths:
        found = rotated_files(path) if len(paths) == 1 else [path]
        if not found:
            raise SidecarError(f"{path}: audit log not found")
        files += found
    return files


def audit_verify(args: argparse.Namespace) -> int:
    """Verify the log: with one path, every worker's segment beside it too (each its own
    chain, checkpoints and verdict); exit 0 only if all are intact."""
    from sidecar.workers import segments

    for option, path in (
        ("--bundle", args.bundle),
        ("--key", args.key),
        ("--checkpoints", args.checkpoints),
    ):
        if path is not None and not path.is_file():
            raise SidecarError(f"{option} {path}: file not found")
    if len(args.files) == 1 and args.checkpoints is None:
        groups = [(segment, _audit_files([segment])) for segment in segments(args.files[0])]
    else:
        groups = [(None, _audit_files(args.files))]
    intact = True
    for live, files in groups:
        prefix = f"{files[-1].name}: " if len(groups) > 1 else ""
        intact = _verify_segment(files, args, prefix, live) and intact
    return 0 if intact else 1


def _verify_segment(
    files: list[Path], args: argparse.Namespace, prefix: str, live: Path | None = None
) -> bool:
    from sidecar.audit import verify

    # The live file's checkpoint file, even when only the live file's rotations are left.
    live = live or files[-1]
    checkpoints = args.checkpoints or live.with_name(live.name + ".checkpoints")
    report = verify(
        files,
        checkpoints_file=checkpoints,
        key_file=args.key,
        bundle_file=args.bundle,
        require_sealed=args.require_sealed,
        signers=args.signer,
        max_unsealed_records=args.max_unsealed_records,
        max_unsealed_age_s=args.max_unsealed_age,
    )
    for problem in report.problems:
        print(f"{prefix}BAD: {problem}")
    for note in report.notes:
        print(f"{prefix}note: {note}")
    if report.uncovered:  # said plainly, whether it fails (--require-sealed) or not
        print(f"{prefix}not covered: {report.uncovered}")
    verdict = "intact" if report.intact else "NOT intact"
    print(
        f"{prefix}{report.records} records, {report.checkpoints} checkpoints, signed through "
        f"seq {report.sealed_through}: {verdict}"
    )
    return report.intact


def audit_show(args: argparse.Namespace) -> int:
    from sidecar.audit.show import parse_since, rows, table

    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        raise SidecarError(f"--since {args.since!r}: {exc}") from exc
    from sidecar.workers import segments

    if len(args.files) == 1:  # and the other workers' segments, merged in time order
        files = [f for segment in segments(args.files[0]) for f in _audit_files([segment])]
    else:
        files = _audit_files(args.files)
    found = sorted(
        rows(
            files,
            subject=args.subject,
            tool=args.tool,
            effect=args.effect,
            since_ns=since,
        ),
        key=lambda row: row[0],
    )
    print(table(found))
    print(f"{len(found)} calls")
    return 0
