"""Issue 25, deliverable 2: settings beside their package, config.py only assembling them.

A refactor: the config format and every error (naming the file and the dotted key) are as
before; these tests pin where each section now lives and that errors raised inside a package's
own settings module still come out keyed and filed.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

import sidecar.config as config
from sidecar.config import ConfigError, Settings, parse_settings

MINIMAL = {"identity": {"mode": "static", "spiffe_id": "spiffe://example.org/agent"}}


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(Settings)
    found = {}
    for f in dataclasses.fields(Settings):
        tp = hints[f.name]
        if typing.get_origin(tp) is not None:  # Mapping[str, X]
            tp = typing.get_args(tp)[1]
        found[f.name] = tp
    return found


def test_item2_every_section_is_defined_beside_its_package_not_in_config():
    for key, tp in _section_types().items():
        module = tp.__module__
        assert module.endswith((".settings", "_settings")), (key, module)
        # ... and config re-exports the very same class (``from sidecar.config import X``)
        assert getattr(config, tp.__name__) is tp, key


def test_item2_config_defines_only_the_assembled_settings():
    own = [
        name
        for name, value in vars(config).items()
        if isinstance(value, type) and value.__module__ == "sidecar.config"
    ]
    assert own == ["Settings"]


@pytest.mark.parametrize(
    ("section", "value", "key", "says"),
    [
        ("policy", {"timeout_ms": "250"}, "policy.timeout_ms", "expected an integer"),
        ("policy", {"workers": 0}, "policy.workers", "between 1 and 64"),
        ("audit", {"mode": "sometimes"}, "audit.mode", "not one of strict, best_effort"),
        ("approvals", {"approvers": ["nobody"]}, "approvals.approvers", "not a SPIFFE ID"),
        ("relay", {"max_concurrency": True}, "relay.max_concurrency", "expected an integer"),
        ("tasks", {"max_ttl_s": 1, "default_ttl_s": 2}, "tasks.max_ttl_s", ">= default_ttl_s"),
        ("budgets", {"task_tokens": -1}, "budgets.task_tokens", ">= 0"),
        ("admin", {"listen": "nowhere"}, "admin.listen", "not HOST:PORT"),
        ("frontdoor", {"listen": "10.0.0.1:80"}, "frontdoor.listen", "not a loopback"),
        ("delegation", {"max_links": 33}, "delegation.max_links", "between 1 and 32"),
        ("authzen", {"max_evaluations": 0}, "authzen.max_evaluations", "1..1000"),
        ("users", {"header": "Authorization"}, "users.header", "lowercase header"),
        ("server", {"listen": "unix:///a.sock"}, "server.listen", "expected a list"),
        ("targets", {"t": {"base_url": "ftp://x"}}, "targets.t.base_url", "not an http(s)"),
        ("tools", {"x": {"target": "t"}}, "tools.x.operation", "required key is missing"),
        ("providers", {"p": []}, "providers.p", "expected a mapping, got a list"),
        ("identity", {"mode": "static", "spiffe_id": "x"}, "identity.spiffe_id", "SPIFFE ID"),
    ],
)
def test_item2_errors_from_a_package_settings_module_name_the_file_and_the_key(
    tmp_path, section, value, key, says
):
    raw = {**MINIMAL, section: value}
    with pytest.raises(ConfigError) as exc:
        parse_settings(raw, source=tmp_path / "sidecar.yaml")
    message = str(exc.value)
    assert message.startswith(f"{tmp_path / 'sidecar.yaml'}: {key}: "), message
    assert says in message


def test_item2_a_section_of_the_wrong_shape_is_refused_not_crashed(tmp_path):
    for hostile in (None, 7, "policy", ["a"], {"policy": "x"}, {"policy": {1: 2}}):
        with pytest.raises(ConfigError):
            parse_settings(hostile, source=tmp_path / "c.yaml")


def test_item2_paths_in_moved_sections_still_resolve_against_the_file(tmp_path):
    raw = {**MINIMAL, "audit": {"path": "logs/a.log"}}
    settings = parse_settings(raw, source=tmp_path / "conf" / "c.yaml")
    assert settings.audit.path == (tmp_path / "conf" / "logs/a.log").resolve()
    assert settings.policy.dir == (tmp_path / "conf" / "rego").resolve()
    assert isinstance(settings.audit.path, Path)
