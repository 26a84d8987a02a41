"""Configuration: strict, typed, and every error names the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import ConfigError, load_settings, parse_settings

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = {"identity": {"mode": "static", "spiffe_id": "spiffe://example.org/agent"}}


def test_the_demo_config_loads_with_paths_resolved_against_its_file():
    settings = load_settings(ROOT / "examples/demo/config.yaml")
    assert settings.policy.dir == (ROOT / "rego").resolve()
    assert settings.tools["tickets.get"].path_params == ("id",)
    assert settings.server.listen == ("unix:///tmp/agent-sidecar/agent.sock",)


def test_defaults_apply_to_a_minimal_config(tmp_path):
    settings = parse_settings(MINIMAL, source=tmp_path / "c.yaml")
    assert settings.server.listen == ("unix:///run/agent-sidecar/agent.sock",)
    assert settings.server.socket_mode == "0660"
    assert settings.policy.query == "data.agentsidecar.authz.decision"
    assert settings.policy.dir == tmp_path / "rego"


POD = {"mode": "pod", "socket": "unix:///run/spire/agent.sock"}


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"identity": POD, "server": {"listen": ["127.0.0.1:7443"]}}, "server.listen"),
        (
            {"identity": POD, "server": {"listen": ["unix:///a.sock", "[::1]:7443"]}},
            "server.listen",
        ),
        ({"identity": POD, "frontdoor": {"listen": "127.0.0.1:7480"}}, "frontdoor.listen"),
    ],
    ids=["tcp_listener", "tcp_beside_unix", "front_door"],
)
def test_item12_tcp_in_pod_mode_is_an_explicit_opt_in(tmp_path, raw, key):
    """Pod mode names the caller by the pod's SVID: on TCP anything in the network namespace
    would be that caller, so TCP needs identity.pod_tcp; unix sockets do not."""
    with pytest.raises(ConfigError) as refused:
        parse_settings(raw, source=tmp_path / "c.yaml")
    assert f"{key}:" in str(refused.value) and "identity.pod_tcp" in str(refused.value)
    opted = raw | {"identity": POD | {"pod_tcp": True}}
    assert parse_settings(opted, source=tmp_path / "c.yaml").identity.pod_tcp
    assert parse_settings({"identity": POD}, source=tmp_path / "c.yaml").server.listen == (
        "unix:///run/agent-sidecar/agent.sock",
    )


@pytest.mark.parametrize(
    ("raw", "key", "words"),
    [
        ({"server": {"socket_mode": "0666"}}, "server.socket_mode", "give others nothing"),
        ({"server": {"socket_mode": "rw-rw----"}}, "server.socket_mode", "octal"),
        ({"polcy": {}}, "polcy", "unknown key"),
        (
            {"models": {"m": {"provider": "nowhere"}}},
            "models.m.provider",
            "not a configured provider",
        ),
        ({"providers": {"p": {"base_url": "ftp://x"}}}, "providers.p.base_url", "not an http"),
        ({"frontdoor": {"listen": "0.0.0.0:8080"}}, "frontdoor.listen", "not a loopback"),
        ({"budgets": {"task_tokens": -1}}, "budgets.task_tokens", "must be >= 0"),
        ({"approvals": {"socket_mode": "rw-------"}}, "approvals.socket_mode", "octal"),
        ({"approvals": {"listen": "127.0.0.1:9"}}, "approvals.approvers", "required"),
        (
            {"approvals": {"listen": "127.0.0.1:9", "approvers": ["alice"]}},
            "approvals.approvers",
            "not a SPIFFE ID",
        ),
        ({"approvals": {"max_ttl_s": 0}}, "approvals.max_ttl_s", "must be > 0"),
        ({"approvals": {"notify_url": "ftp://x"}}, "approvals.notify_url", "not an http"),
        ({"approvals": {"groups": {"oncall": "alice"}}}, "approvals.groups.oncall", "a list"),
        ({"tasks": {"default_ttl_s": 10, "max_ttl_s": 5}}, "tasks.max_ttl_s", ">= default"),
        ({"delegation": {"max_links": 0}}, "delegation.max_links", "between 1 and 32"),
        ({"policy": {"timeout": 5}}, "policy.timeout", "unknown key"),
        ({"policy": {"timeout_ms": "fast"}}, "policy.timeout_ms", "expected an integer"),
        ({"policy": {"timeout_ms": True}}, "policy.timeout_ms", "expected an integer"),
        ({"policy": {"engine": "wasm"}}, "policy.engine", "not one of"),
        ({"policy": {"query": "decision"}}, "policy.query", "not a data reference"),
        ({"server": {"listen": "127.0.0.1:1"}}, "server.listen", "expected a list"),
        ({"server": {"listen": ["0.0.0.0:7443"]}}, "server.listen", "not a loopback"),
        ({"server": {"listen": ["10.0.0.1:7443"]}}, "server.listen", "not a loopback"),
        ({"identity": {"mode": "static"}}, "identity.spiffe_id", "required"),
        ({"identity": {"mode": "static", "spiffe_id": "x"}}, "identity.spiffe_id", "SPIFFE ID"),
        ({"targets": {"t": {"base_url": "ftp://x"}}}, "targets.t.base_url", "http(s)"),
        ({"targets": {"t": {"base_url": "http://u:p@x"}}}, "targets.t.base_url", "credentials"),
        ({"targets": {"t": {}}}, "targets.t.base_url", "required key is missing"),
        (
            {"tools": {"x": {"target": "nope", "operation": "read", "method": "GET", "path": "/"}}},
            "tools.x.target",
            "not a configured target",
        ),
        (
            {
                "targets": {"t": {"base_url": "http://h"}},
                "tools": {"x": {"target": "t", "operation": "write", "method": "GET", "path": "/"}},
            },
            "tools.x.operation",
            "not one of read, act, delegate",
        ),
        (
            {
                "targets": {"t": {"base_url": "http://h"}},
                "tools": {"x": {"target": "t", "operation": "read", "method": "GET", "path": "a"}},
            },
            "tools.x.path",
            "must start with",
        ),
    ],
)
def test_bad_config_names_the_file_and_key(tmp_path, raw, key, words):
    merged = {**MINIMAL, **raw}
    with pytest.raises(ConfigError) as error:
        parse_settings(merged, source=tmp_path / "sidecar.yaml")
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'sidecar.yaml'}: {key}: "), message
    assert words in message


def test_missing_file_and_bad_yaml_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)


def test_loopback_and_unix_listeners_are_accepted(tmp_path):
    raw = {**MINIMAL, "server": {"listen": ["[::1]:7000", "localhost:7001", "unix:///run/a.sock"]}}
    assert len(parse_settings(raw, source=tmp_path / "c.yaml").server.listen) == 3


def test_settings_are_frozen(tmp_path):
    settings = parse_settings(MINIMAL, source=tmp_path / "c.yaml")
    with pytest.raises(AttributeError):
        settings.policy.timeout_ms = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.tools["new"] = None  # type: ignore[index]


def test_the_approvals_listener_defaults_to_a_socket_in_the_state_dir(tmp_path):
    settings = parse_settings(MINIMAL, source=tmp_path / "c.yaml")
    assert settings.state_db == tmp_path / "state" / "state.db"
    assert settings.approvals_listen == f"unix://{tmp_path / 'state' / 'approvals.sock'}"


def test_the_approvals_listener_is_never_an_agent_listener(tmp_path):
    raw = {
        **MINIMAL,
        "server": {"listen": ["unix:///run/a.sock"]},
        "approvals": {"listen": "unix:///run/a.sock"},
    }
    with pytest.raises(ConfigError, match=r"approvals\.listen: must not be an agent API address"):
        parse_settings(raw, source=tmp_path / "c.yaml")


# --- item 13: --set addresses names with dots (tools."tickets.get".path=...) ----------------

DEMO = ROOT / "examples/demo/config.yaml"


@pytest.mark.parametrize(
    "override",
    [
        'tools."tickets.get".path=/v2/tickets/{id}',
        r"tools.tickets\.get.path=/v2/tickets/{id}",
        'tools.tick"ets.g"et.path=/v2/tickets/{id}',  # a quoted part inside a segment
    ],
)
def test_item13_set_addresses_a_tool_whose_name_has_dots(override):
    settings = load_settings(DEMO, overrides=[override])
    assert settings.tools["tickets.get"].path == "/v2/tickets/{id}"
    assert "tickets" not in settings.tools  # no new tool conjured from the first segment
    assert settings.tools["tickets.create"].path == "/tickets"  # the others untouched


def test_item13_set_keeps_plain_keys_and_yaml_values():
    settings = load_settings(
        DEMO,
        overrides=[
            "policy.timeout_ms=99",
            'server.listen=["unix:///tmp/x.sock"]',
            "audit.fsync=true",
        ],
    )
    assert settings.policy.timeout_ms == 99
    assert settings.server.listen == ("unix:///tmp/x.sock",)
    assert settings.audit.fsync is True


def test_item13_set_an_equals_sign_inside_quotes_is_part_of_the_name():
    from sidecar.overrides import parse_override

    assert parse_override('a."b=c".d=1=2') == (["a", "b=c", "d"], "1=2")
    assert parse_override(r'a."q\"uote".b=x') == (["a", 'q"uote', "b"], "x")


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ('tools."tickets.get.path=/x', "a quote is not closed"),
        ("tools..path=/x", "a key segment is empty"),
        ('tools."".path=/x', "a key segment is empty"),
        ("=1", "a key segment is empty"),
        ("tools.x\\", "a backslash at the end escapes nothing"),
        ("policy.engine", "expected KEY=VALUE"),
        ("", "expected KEY=VALUE"),
        ("policy.timeout_ms=[1", "not valid YAML"),
        ("server.listen.x=1", "server.listen is not a mapping"),
        ('tools."tickets.get".path.x=1', 'tools."tickets.get".path is not a mapping'),
        pytest.param("a" * 100_000 + "=1", "unknown key", id="oversized-key"),
    ],
)
def test_item13_a_malformed_set_is_a_config_error_naming_it(override, words):
    with pytest.raises(ConfigError) as err:
        load_settings(DEMO, overrides=[override])
    assert words in str(err.value), str(err.value)[:300]
