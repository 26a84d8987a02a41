"""The peer's SPIFFE ID, checked on every TLS connection to it (docs/a2a.md "Outbound").

A CA chain and a DNS name say only "some workload of the trust domain": a peer configured
with ``spiffe_id`` must present exactly that ID as its leaf's URI SAN. Python's ssl has no
hook to check it during the handshake, so :class:`SpiffeConnector` checks it right after,
before a byte of the request is sent; the card fetch (cards.py) and the relay (relay.py)
share it. :func:`wire_peer_tls` gives the relay's SPIFFE peers the trust bundle (and, with
``credential: mtls``, the X.509-SVID), again after every rotation.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from functools import partial
from typing import Any

import aiohttp
from cryptography import x509

from sidecar.a2a.errors import A2aError
from sidecar.a2a.settings import A2aPeerSettings, peer_target
from sidecar.identity.credentials import load_svid
from sidecar.identity.errors import IdentityError
from sidecar.identity.workload import Snapshot, WorkloadIdentity
from sidecar.relay import HttpRelay

__all__ = [
    "ServerIdentityMismatch",
    "SpiffeConnector",
    "connectors",
    "peer_context",
    "spiffe_id_of",
    "spiffe_peers",
    "wire_peer_tls",
]


class ServerIdentityMismatch(A2aError):
    """The TLS server is not the SPIFFE ID expected of it; no request byte was sent. (Not an
    OSError: aiohttp must not try the host's next address with it, but stop.)"""

    def __init__(self, expected: str, presented: str) -> None:
        super().__init__(
            f"the server is {presented or 'no single SPIFFE ID'}, not {expected}",
            code="peer_identity_mismatch",
        )
        self.expected = expected
        self.presented = presented


def spiffe_id_of(der: bytes | None) -> str:
    """The leaf's SPIFFE ID: its only URI SAN ("" without one, or with several)."""
    if not der:
        return ""
    cert = x509.load_der_x509_certificate(der)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ""
    uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if len(uris) == 1 else ""


class SpiffeConnector(aiohttp.TCPConnector):
    """A TCPConnector whose every TLS connection must be to ``spiffe_id`` (else
    :class:`ServerIdentityMismatch`, the connection closed before the request is written)."""

    def __init__(self, spiffe_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._spiffe_id = spiffe_id

    async def _wrap_create_connection(self, *args: Any, **kwargs: Any) -> Any:
        transport, protocol = await super()._wrap_create_connection(*args, **kwargs)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        presented = spiffe_id_of(der)
        if presented != self._spiffe_id:
            transport.close()
            raise ServerIdentityMismatch(self._spiffe_id, presented)
        return transport, protocol


def spiffe_peers(peers: Mapping[str, A2aPeerSettings]) -> dict[str, A2aPeerSettings]:
    """The peers whose server identity is checked: a ``spiffe_id`` and an https url."""
    return {
        name: peer
        for name, peer in peers.items()
        if peer.spiffe_id and peer.url.lower().startswith("https://")
    }


def connectors(peers: Mapping[str, A2aPeerSettings]) -> dict[str, Any]:
    """For the relay pool: each SPIFFE peer's target gets a :class:`SpiffeConnector`."""
    return {
        peer_target(name): partial(SpiffeConnector, peer.spiffe_id)
        for name, peer in spiffe_peers(peers).items()
    }


def peer_context(snapshot: Snapshot, *, present_svid: bool) -> ssl.SSLContext:
    """A client context trusting only the SPIFFE bundle; the server's identity is its SPIFFE
    ID (checked by :class:`SpiffeConnector`), not a DNS name. The SVID is the client
    certificate only with ``present_svid`` (``credential: mtls``)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.load_verify_locations(cadata=snapshot.bundle_pem().decode("ascii"))
    if present_svid:
        load_svid(context, snapshot)
    return context


def wire_peer_tls(
    relay: HttpRelay, peers: Mapping[str, A2aPeerSettings], identity: WorkloadIdentity
) -> frozenset[str]:
    """Give every SPIFFE peer without ``ca_file`` the bundle context, now and after every
    rotation (no handshake succeeds before the first snapshot). Returns their targets."""
    wired = {
        peer_target(name): peer.credential.kind == "mtls"
        for name, peer in spiffe_peers(peers).items()
        if peer.ca_file is None
    }
    if not wired:
        return frozenset()
    refuse_all = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no roots: every handshake fails
    for target in wired:
        relay.use_tls(target, refuse_all)

    def apply(snapshot: Snapshot) -> None:
        plain = peer_context(snapshot, present_svid=False)
        mutual = peer_context(snapshot, present_svid=True)
        for target, mtls in wired.items():
            relay.use_tls(target, mutual if mtls else plain)

    identity.subscribe(apply)
    try:  # a snapshot taken before we subscribed was not given to ``apply``
        snapshot = identity.snapshot()
    except IdentityError:
        return frozenset(wired)
    apply(snapshot)
    return frozenset(wired)
