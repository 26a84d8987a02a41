"""Every option of every command says what it does, and its default where it has one."""

from __future__ import annotations

import argparse

import pytest

from sidecar.cli.parser import build_parser


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(build_parser()))


def test_there_are_commands_to_check():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"serve", "health", "egress-lock", "policy check", "audit verify"} <= names


@pytest.mark.parametrize(
    ("path", "parser"), COMMANDS, ids=[" ".join(p) or "-" for p, _ in COMMANDS]
)
def test_every_option_has_help_and_shows_its_default(path, parser):
    text = parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            assert all(a.help for a in action._choices_actions), path
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help, f"agent-sidecar {' '.join(path)}: {name} has no help"
        default = action.default
        if default not in (None, False, [], argparse.SUPPRESS):
            shown = str(default)
            assert f"default: {shown}" in " ".join(text.split()) or "default:" in action.help, (
                f"agent-sidecar {' '.join(path)}: {name} does not show its default {shown!r}"
            )


def test_health_help_names_the_socket_and_the_timeout():
    [(_, health)] = [(p, c) for p, c in COMMANDS if p == ("health",)]
    text = " ".join(health.format_help().split())
    assert "(default: unix:///run/agent-sidecar/agent.sock)" in text
    assert "(default: 2.0)" in text


@pytest.mark.parametrize(
    ("path", "parser"), COMMANDS, ids=[" ".join(p) or "-" for p, _ in COMMANDS]
)
def test_item13_help_shows_no_unavailable_option_and_no_empty_default(path, parser):
    text = " ".join(parser.format_help().split())
    assert "(default: )" not in text, path
    assert "not available" not in text and "--coverage" not in text, path


def test_item13_set_help_says_how_to_quote_a_name_with_dots():
    [(_, serve)] = [(p, c) for p, c in COMMANDS if p == ("serve",)]
    text = " ".join(serve.format_help().split())
    assert 'tools."tickets.get".path=' in text
