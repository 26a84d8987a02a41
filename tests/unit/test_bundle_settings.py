"""Issue 27, deliverable 1: ``policy.bundle`` is validated once, when the configuration is
read, with OPA's key names and an error naming the full key."""

from __future__ import annotations

import pytest

from sidecar.config import ConfigError
from tests.support.bundles import KeyPair, bundle_config
from tests.support.running import sidecar_settings

URL = "http://127.0.0.1:9"
PUBLIC = KeyPair("ec").public_pem


def _settings(tmp_path, bundle, **policy):
    return sidecar_settings(tmp_path, URL, policy={"bundle": bundle, **policy})


def test_item1_valid_bundle_settings_mean_what_they_mean_in_opa(tmp_path):
    bundle = bundle_config(
        "https://bundles.example.com/v1/",
        tmp_path,
        signing={"keyid": "k1", "scope": "write", "exclude_files": ["notes/*"]},
        keys={"k1": {"key": PUBLIC, "algorithm": "ES256"}},
        source={"resource": "", "persist": False},
    )
    settings = _settings(tmp_path, bundle).policy.bundle
    assert settings.name == "authz"
    assert settings.url == "https://bundles.example.com/v1/bundles/authz"  # OPA's default
    assert settings.source.signing.exclude_files == ("notes/*",)
    assert settings.source.polling.min_delay_seconds == 1


BAD = {
    "two_bundles": (
        lambda b: b["bundles"].update({"other": {"service": "acme"}}),
        "policy.bundle.bundles: the embedded engine serves exactly one bundle",
    ),
    "unknown_service": (
        lambda b: b["bundles"]["authz"].update({"service": "nope"}),
        "bundles: authz.service 'nope' is not in services",
    ),
    "bad_url": (
        lambda b: b["services"]["acme"].update({"url": "ftp://x"}),
        "policy.bundle.services.acme.url",
    ),
    "url_with_credentials": (
        lambda b: b["services"]["acme"].update({"url": "http://u:p@h"}),
        "credentials in the URL",
    ),
    "unknown_key": (lambda b: b.update({"nope": 1}), "policy.bundle.nope: unknown key"),
    "keyid_unknown": (
        lambda b: b["bundles"]["authz"].update({"signing": {"keyid": "k9"}}),
        "signing.keyid 'k9' is not in keys",
    ),
    "private_key_as_key": (
        lambda b: b.update(
            {"keys": {"k1": {"key": KeyPair("ec").private_pem.decode(), "algorithm": "ES256"}}}
        ),
        "a private key; give the public key",
    ),
    "hmac_algorithm": (
        lambda b: b.update({"keys": {"k1": {"key": PUBLIC, "algorithm": "HS256"}}}),
        "'HS256' is not one of",
    ),
    "min_over_max": (
        lambda b: b["bundles"]["authz"].update(
            {"polling": {"min_delay_seconds": 10, "max_delay_seconds": 5}}
        ),
        "max_delay_seconds: must be >= min_delay_seconds",
    ),
    "two_credentials": (
        lambda b: b["services"]["acme"].update(
            {"credentials": {"bearer": {"token": "t"}, "svid": True}}
        ),
        "choose one of bearer, client_tls, svid",
    ),
    "authorization_header": (
        lambda b: b["services"]["acme"].update({"headers": {"Authorization": "x"}}),
        "set by the poller",
    ),
    "resource_traversal": (
        lambda b: b["bundles"]["authz"].update({"resource": "../x"}),
        "resource: must not contain '..'",
    ),
    "wrong_type": (
        lambda b: b["bundles"]["authz"].update({"persist": "yes"}),
        "policy.bundle.bundles.authz.persist: expected true or false",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_item1_bad_bundle_settings_refused_with_the_key(tmp_path, case):
    change, message = BAD[case]
    bundle = bundle_config(URL, tmp_path)
    change(bundle)
    with pytest.raises(ConfigError) as refused:
        _settings(tmp_path, bundle)
    assert message in str(refused.value)


def test_item1_bundle_only_for_the_embedded_engine(tmp_path):
    with pytest.raises(ConfigError, match="bundle: only for the embedded engine"):
        _settings(tmp_path, bundle_config(URL, tmp_path), engine="opa")


def test_item1_bearer_token_not_in_the_settings_repr(tmp_path):
    bundle = bundle_config(URL, tmp_path)
    bundle["services"]["acme"]["credentials"] = {"bearer": {"token": "tok-do-not-print"}}
    assert "tok-do-not-print" not in repr(_settings(tmp_path, bundle))
