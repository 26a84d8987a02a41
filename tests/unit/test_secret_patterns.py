"""The patterns behind the suite-wide secret scan (conftest) recognise real secrets."""

from __future__ import annotations

from sidecar.identity.dev_authority import DevAuthority
from tests.conftest import SECRET_PATTERNS


def test_the_scan_recognises_real_svid_material():
    authority = DevAuthority("scan.example")
    token = authority.issue_jwt("spiffe://scan.example/agent", ["aud"])
    key_pem = authority.issue_x509("spiffe://scan.example/agent").key_pem.decode()
    assert SECRET_PATTERNS["JWT"].search(f"header: Bearer {token}")
    assert SECRET_PATTERNS["private key"].search(key_pem)
    assert not any(
        p.search("decision 01M80PJJAB8QVY8KPJXAYZT53F allowed") for p in SECRET_PATTERNS.values()
    )
