"""DEVELOPMENT ONLY: a SPIFFE Workload API server backed by a :class:`DevAuthority`.

It speaks the real Workload API (``proto/spiffe/workload.proto``) on a unix socket:
FetchX509SVID and FetchX509Bundles and FetchJWTBundles stream updates on every rotation;
FetchJWTSVID issues a token for the requested audiences; ValidateJWTSVID validates one. Like
SPIRE, it refuses calls without the ``workload.spiffe.io: true`` security header. Each socket
serves one identity (SPIRE would pick it by attesting the calling process; here it is given).

The generated code is py-spiffe's own, compiled from the same workload.proto: that proto has
no package, so a second generated copy could not share a process with py-spiffe.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Mapping
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2
from spiffe._proto import workload_pb2, workload_pb2_grpc

from sidecar.identity.dev_authority import DevAuthority, IssuedX509Svid
from sidecar.identity.errors import IdentityError
from sidecar.identity.jwt_svid import validate_jwt_svid

__all__ = ["DevWorkloadApi", "DevWorkloadApiServer"]

log = logging.getLogger(__name__)
_HEADER = ("workload.spiffe.io", "true")
_POLL_S = 0.25


class DevWorkloadApi(workload_pb2_grpc.SpiffeWorkloadAPIServicer):
    """The Workload API for one identity."""

    def __init__(
        self,
        authority: DevAuthority,
        spiffe_id: str,
        *,
        federated: Mapping[str, DevAuthority] | None = None,
        dns_names: tuple[str, ...] = (),
    ) -> None:
        self.authority = authority
        self.spiffe_id = spiffe_id
        self.dns_names = dns_names
        self._federated = dict(federated or {})
        self._cond = threading.Condition()
        self._svid: IssuedX509Svid = authority.issue_x509(spiffe_id, dns_names=dns_names)
        self._generation = 0
        self._stopping = False

    # --- control ------------------------------------------------------------------------

    @property
    def svid(self) -> IssuedX509Svid:
        with self._cond:
            return self._svid

    def rotate(self, *, x509_ttl_s: float | None = None) -> None:
        """Issue a new X.509-SVID (and, through the authority, a new JWT key); push it."""
        self.authority.rotate()
        svid = self.authority.issue_x509(self.spiffe_id, ttl_s=x509_ttl_s, dns_names=self.dns_names)
        with self._cond:
            self._svid = svid
            self._generation += 1
            self._cond.notify_all()

    def set_svid(self, svid: IssuedX509Svid) -> None:
        """Serve a given SVID (tests use it to serve a short-lived or expired one)."""
        with self._cond:
            self._svid = svid
            self._generation += 1
            self._cond.notify_all()

    def set_federated(self, federated: Mapping[str, DevAuthority]) -> None:
        """Serve these federated bundles instead (tests drop a trust domain so); push them."""
        with self._cond:
            self._federated = dict(federated)
            self._generation += 1
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    # --- the Workload API --------------------------------------------------------------

    def FetchX509SVID(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        _require_header(context)
        yield from self._stream(context, self._x509_response)

    def FetchX509Bundles(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        _require_header(context)
        yield from self._stream(
            context,
            lambda: workload_pb2.X509BundlesResponse(bundles=self._x509_bundles()),
        )

    def FetchJWTBundles(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        _require_header(context)
        yield from self._stream(
            context,
            lambda: workload_pb2.JWTBundlesResponse(bundles=self._jwt_bundles()),
        )

    def FetchJWTSVID(self, request: Any, context: grpc.ServicerContext) -> Any:
        _require_header(context)
        if not request.audience:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "audience must be specified")
        if request.spiffe_id and request.spiffe_id != self.spiffe_id:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "no identity issued for that ID")
        token = self.authority.issue_jwt(self.spiffe_id, list(request.audience))
        return workload_pb2.JWTSVIDResponse(
            svids=[workload_pb2.JWTSVID(spiffe_id=self.spiffe_id, svid=token)]
        )

    def ValidateJWTSVID(self, request: Any, context: grpc.ServicerContext) -> Any:
        _require_header(context)
        if not request.audience or not request.svid:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "audience and svid are required")
        from sidecar.identity.workload import parse_jwt_bundles

        bundles = parse_jwt_bundles(self._jwt_bundles())
        try:
            verified = validate_jwt_svid(request.svid, audience=request.audience, bundles=bundles)
        except IdentityError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{exc.code}: {exc}")
        claims = struct_pb2.Struct()
        claims.update(verified.claims)
        return workload_pb2.ValidateJWTSVIDResponse(spiffe_id=verified.spiffe_id, claims=claims)

    # --- helpers ------------------------------------------------------------------------

    def _stream(self, context: grpc.ServicerContext, build: Any) -> Iterator[Any]:
        sent = -1
        while context.is_active():
            with self._cond:
                if self._stopping:
                    return
                if self._generation == sent:
                    self._cond.wait(_POLL_S)
                    continue
                sent = self._generation
                response = build()
            yield response

    def _x509_response(self) -> Any:
        svid = self._svid
        return workload_pb2.X509SVIDResponse(
            svids=[
                workload_pb2.X509SVID(
                    spiffe_id=svid.spiffe_id,
                    x509_svid=svid.chain_der,
                    x509_svid_key=svid.key_der,
                    bundle=self.authority.x509_bundle_der,
                )
            ],
            federated_bundles={
                f"spiffe://{td}": a.x509_bundle_der for td, a in self._federated.items()
            },
        )

    def _x509_bundles(self) -> dict[str, bytes]:
        bundles = {f"spiffe://{self.authority.trust_domain}": self.authority.x509_bundle_der}
        bundles.update({f"spiffe://{td}": a.x509_bundle_der for td, a in self._federated.items()})
        return bundles

    def _jwt_bundles(self) -> dict[str, bytes]:
        bundles = {f"spiffe://{self.authority.trust_domain}": self.authority.jwt_bundle_json}
        bundles.update({f"spiffe://{td}": a.jwt_bundle_json for td, a in self._federated.items()})
        return bundles


def _require_header(context: grpc.ServicerContext) -> None:
    if _HEADER not in tuple(context.invocation_metadata() or ()):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request")


class DevWorkloadApiServer:
    """Serves :class:`DevWorkloadApi` on a unix socket (mode 0666 dir-local, like SPIRE's)."""

    def __init__(self, api: DevWorkloadApi, socket_path: str | Path) -> None:
        self.api = api
        self.socket_path = Path(socket_path)
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        if self.socket_path.exists():
            self.socket_path.unlink()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(api, self._server)
        self._server.add_insecure_port(f"unix:{self.socket_path}")

    @property
    def address(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self) -> DevWorkloadApiServer:
        self._server.start()
        log.warning(
            "DEVELOPMENT ONLY Workload API serving %s on %s (no attestation; keys in memory)",
            self.api.spiffe_id,
            self.socket_path,
        )
        return self

    def stop(self) -> None:
        """Go away as a crashed SPIRE agent would: streams end, the socket disappears."""
        self.api.stop()
        self._server.stop(0).wait()
        if self.socket_path.exists():
            os.unlink(self.socket_path)

    def __enter__(self) -> DevWorkloadApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
