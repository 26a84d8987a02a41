"""proto/spiffe/workload.proto (the official Workload API) and the copy py-spiffe generated its
code from define the same wire protocol: the dev server speaks exactly what SPIRE speaks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SHAPE = textwrap.dedent(
    """
    import json, sys
    def shape(fd):
        messages = {
            m.name: sorted((f.name, f.number, f.type, f.label) for f in m.field)
            for m in fd.message_type
        }
        methods = sorted(
            (s.name, m.name, m.input_type.rsplit(".", 1)[-1], m.output_type.rsplit(".", 1)[-1],
             m.server_streaming)
            for s in fd.service for m in s.method
        )
        return {"messages": messages, "methods": methods}
    """
)


def _run(code: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", SHAPE + code], capture_output=True, text=True, check=True, timeout=60
    )
    return json.loads(done.stdout)


def test_vendored_workload_proto_matches_py_spiffe(tmp_path):
    vendored = _run(
        textwrap.dedent(
            f"""
            from grpc_tools import protoc
            import grpc_tools, os
            from google.protobuf import descriptor_pb2
            inc = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
            out = {str(tmp_path / "set.pb")!r}
            assert protoc.main(["protoc", "-I{ROOT / "proto/spiffe"}", "-I" + inc,
                                "--descriptor_set_out=" + out, "workload.proto"]) == 0
            fds = descriptor_pb2.FileDescriptorSet.FromString(open(out, "rb").read())
            print(json.dumps(shape(fds.file[0])))
            """
        )
    )
    py_spiffe = _run(
        textwrap.dedent(
            """
            from google.protobuf import descriptor_pb2
            from spiffe._proto import workload_pb2
            fd = descriptor_pb2.FileDescriptorProto()
            workload_pb2.DESCRIPTOR.CopyToProto(fd)
            print(json.dumps(shape(fd)))
            """
        )
    )
    assert vendored == py_spiffe
    assert len(vendored["methods"]) == 5
