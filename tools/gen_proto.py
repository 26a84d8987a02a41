"""Generate the Python protobuf/gRPC modules under ``sidecar/_proto`` from ``proto/``.

The generated files are committed so that ``pip install .`` needs no protoc; the test
``tests/unit/test_generated_code.py`` regenerates into a temporary directory and fails when the
committed files are stale. protoc emits absolute imports (``from agentsidecar.v1 import ...``);
they are rewritten to live under ``sidecar._proto``.

Usage: python tools/gen_proto.py [OUT_DIR]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
DEFAULT_OUT = ROOT / "sidecar" / "_proto"
_IMPORT = re.compile(r"^from (agentsidecar)((?:\.\w+)*) import", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    """Run protoc over every .proto under proto/ and return the files written."""
    import grpc_tools
    from grpc_tools import protoc  # build-time dependency only

    # Only our own API: proto/spiffe/workload.proto is served with py-spiffe's generated code.
    protos = sorted(
        str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / "agentsidecar").rglob("*.proto")
    )
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = []
    for path in sorted(out_dir.rglob("*.py*")):
        if path.suffix not in (".py", ".pyi"):
            continue
        text = _IMPORT.sub(r"from sidecar._proto.\1\2 import", path.read_text())
        path.write_text(text)
        written.append(path)
    for folder in [out_dir, *[p for p in out_dir.rglob("*") if p.is_dir()]]:
        init = folder / "__init__.py"
        if not init.exists():
            init.write_text("")
            written.append(init)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    for f in generate(target):
        print(f.relative_to(target))
