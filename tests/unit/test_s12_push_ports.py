"""Review s12 (h2): a push-notification URL reaches policy as scheme, host AND effective port,
read strictly (sidecar/a2a/push_url.py); anything another HTTP client could read differently
is refused at parse with ``invalid_params``, and its message never quotes the URL."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from sidecar.a2a import protocol
from sidecar.a2a.errors import A2aProtocolError
from sidecar.a2a.inbound_request import push_fact
from sidecar.a2a.push_url import PushTarget, PushUrlError, parse_push_url

SECRET = "hunter2-s3cr3t"
SCHEMA = "rego/schemas/input.v1.json"


@pytest.mark.parametrize(
    ("url", "fact"),
    [
        ("https://hooks.example.com/a2a", ("https", "hooks.example.com", 443)),
        ("http://hooks.example.com/a2a", ("http", "hooks.example.com", 80)),
        ("https://hooks.example.com:6379/", ("https", "hooks.example.com", 6379)),
        ("HTTPS://HOOKS.Example.COM:8443", ("https", "hooks.example.com", 8443)),
        ("https://hooks.example.com:443", ("https", "hooks.example.com", 443)),
        ("http://hooks.example.com:00080/", ("http", "hooks.example.com", 80)),
        ("https://hooks.example.com:65535?x=1#y", ("https", "hooks.example.com", 65535)),
        ("https://10.0.0.7:1/", ("https", "10.0.0.7", 1)),
        ("http://[::1]:8080/x", ("http", "::1", 8080)),
        ("https://[FD00:0:0:0:0:0:0:1]/", ("https", "fd00::1", 443)),
        ("http://[::ffff:169.254.169.254]/", ("http", "::ffff:a9fe:a9fe", 80)),
        ("https://hooks.example.com./", ("https", "hooks.example.com.", 443)),
    ],
)
def test_s12_push_port_the_effective_port_and_normalised_host_reach_policy(url, fact):
    scheme, host, port = fact
    assert parse_push_url(url) == PushTarget(scheme, host, port)
    assert push_fact(url) == {"scheme": scheme, "host": host, "port": port}


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com:0/",  # port out of range
        "https://hooks.example.com:65536/",
        "https://hooks.example.com:99999999999999999999/",
        "https://hooks.example.com:-1/",  # not decimal digits
        "https://hooks.example.com:+443/",
        "https://hooks.example.com:0x1bb/",
        "https://hooks.example.com:44 3/",
        "https://hooks.example.com:443:443/",
        "https://hooks.example.com:/",  # an empty port
        "https://hooks.example.com:١٢٣/",  # non-ASCII digits int() would read
        f"https://user:{SECRET}@hooks.example.com/",  # userinfo
        f"https://{SECRET}@hooks.example.com/",
        "https://@hooks.example.com/",
        f"https://evil.example\\@hooks.example.com/{SECRET}",  # a backslash
        "https://hooks.example.com\\.evil.example/",
        "https://[fe80::1%25eth0]:8080/",  # an IPv6 zone id
        "https://[fe80::1%eth0]/",
        "https://[v1.fe80::1]/",  # IPvFuture
        "https://[::1/",
        "https://[::1]x/",
        "https://[not-v6]/",
        "https://:443/",  # an empty host
        "https:///x",
        "https://",
        "https:hooks.example.com",
        "https://hooks%2eexample.com/",  # a percent-escape in the host
        "https://hooks.exämple.com/",  # non-ASCII
        "https://hooks.exa\tmple.com:6379/",  # stripped by urlsplit, not by every client
        "https://hooks.example.com\n:6379/",
        " https://hooks.example.com/",
        "ftp://hooks.example.com/",
        "hooks.example.com:443",
        "https://" + "a" * 9000,
    ],
)
def test_s12_push_port_an_ambiguous_or_malformed_url_is_refused_at_parse(url):
    with pytest.raises(PushUrlError) as caught:
        parse_push_url(url)
    assert SECRET not in str(caught.value)
    v1 = {"taskId": "t", "url": url}
    body = {"jsonrpc": "2.0", "id": 1, "method": "CreateTaskPushNotificationConfig", "params": v1}
    with pytest.raises(A2aProtocolError) as refused:
        protocol.parse_request(json.dumps(body).encode())
    assert refused.value.code == "invalid_params"
    assert SECRET not in str(refused.value)


@pytest.mark.parametrize(
    "params",
    [
        {"taskId": "t", "url": "https://hooks.example.com:8443/"},
        {"taskId": "t", "pushNotificationConfig": {"url": "https://hooks.example.com:8443/"}},
    ],
)
def test_s12_push_port_push_config_set_in_both_versions_carries_the_port(params):
    method = "CreateTaskPushNotificationConfig" if "url" in params else None
    method = method or "tasks/pushNotificationConfig/set"
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    parsed = protocol.parse_request(json.dumps(body).encode())
    assert push_fact(parsed.push_url) == {
        "scheme": "https",
        "host": "hooks.example.com",
        "port": 8443,
    }


def test_s12_push_port_no_push_url_is_no_fact():
    assert push_fact("") is None


def test_s12_push_port_the_input_schema_requires_the_port():
    """rego/schemas/input.v1.json: both push_url objects name an integer port 1-65535."""
    schema = json.loads((Path(__file__).resolve().parents[2] / SCHEMA).read_text())
    shapes = [
        schema["properties"]["inbound"]["properties"]["push_url"],
        schema["$defs"]["a2a_arguments"]["properties"]["push_url"],
    ]
    fact = push_fact("https://[FD00::1]:9000/x")
    for shape in shapes:
        jsonschema.validate(fact, shape)
        for bad in ({"scheme": "https", "host": "h"}, {"scheme": "https", "host": "h", "port": 0}):
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate(bad, shape)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"scheme": "https", "host": "h", "port": "443"}, shape)
