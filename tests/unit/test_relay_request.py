"""Requests are built from configuration; the agent's arguments never choose the URL."""

from __future__ import annotations

import pytest

from sidecar.config import TargetSettings, ToolSettings
from sidecar.relay import RequestBuildError, build_request

TARGET = TargetSettings(base_url="https://api.example.com/v2/")


def test_path_parameters_are_single_encoded_segments():
    tool = ToolSettings(target="t", operation="read", method="GET", path="/tickets/{id}/notes/{n}")
    request = build_request(TARGET, tool, {"id": "a/b?c#d", "n": 3, "q": "x", "tags": ["a", "b"]})
    assert request.url == "https://api.example.com/v2/tickets/a%2Fb%3Fc%23d/notes/3"
    assert request.params == [("q", "x"), ("tags", "a"), ("tags", "b")]


def test_body_methods_send_the_remaining_arguments_as_json():
    tool = ToolSettings(target="t", operation="act", method="POST", path="/tickets/{id}/close")
    request = build_request(TARGET, tool, {"id": "7", "reason": "done", "meta": {"a": [1]}})
    assert request.json_body == {"reason": "done", "meta": {"a": [1]}}


@pytest.mark.parametrize(
    "args", [{}, {"id": ".."}, {"id": "."}, {"id": ""}, {"id": True}, {"id": {"x": 1}}]
)
def test_unusable_path_parameters_are_refused(args):
    tool = ToolSettings(target="t", operation="read", method="GET", path="/tickets/{id}")
    with pytest.raises(RequestBuildError):
        build_request(TARGET, tool, args)


def test_nested_values_cannot_be_query_parameters():
    tool = ToolSettings(target="t", operation="read", method="GET", path="/search")
    with pytest.raises(RequestBuildError):
        build_request(TARGET, tool, {"filter": {"a": 1}})
