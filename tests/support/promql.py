"""The metric selectors of a PromQL expression, and the series a ``/metrics`` scrape exports.

Enough of PromQL's lexical grammar to find every metric name an expression reads (string
literals, label matchers, ranges and subqueries, ``offset``, grouping label lists, function
and aggregation calls, numbers, durations, Grafana's ``$variables``), so that a dashboard or an
alert naming a series the sidecar does not export fails a test instead of drawing nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "Exported",
    "PromQLSyntaxError",
    "Selector",
    "exported",
    "grouping_labels",
    "label_values_selector",
    "parse",
]

# Words that are operators or modifiers, never metric names (PromQL is case-sensitive here).
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
_KEYWORDS |= {"group_left", "group_right", "inf", "nan", "Inf", "NaN", "start", "end", "atan2"}
_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count"}
_AGGREGATIONS |= {"count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_NUMBER = re.compile(r"0x[0-9a-fA-F]+|[0-9][0-9a-zA-Z_.]*(?:[eE][+-]?[0-9]+)?")
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$[a-zA-Z_][a-zA-Z0-9_]*|\[\[[a-zA-Z0-9_]+\]\]")
_MATCH_OPS = ("=~", "!~", "!=", "=")


class PromQLSyntaxError(ValueError):
    """An expression this reader cannot take apart (unbalanced, an unterminated string)."""


@dataclass
class Selector:
    """One vector selector: its metric name and its label matchers (label, op, value)."""

    name: str
    matchers: list[tuple[str, str, str]] = field(default_factory=list)


def _string(expr: str, i: int) -> tuple[str, int]:
    quote = expr[i]
    j = i + 1
    out = []
    while j < len(expr):
        c = expr[j]
        if c == "\\" and quote != "`":
            if j + 1 >= len(expr):
                break
            out.append(expr[j + 1])
            j += 2
            continue
        if c == quote:
            return "".join(out), j + 1
        out.append(c)
        j += 1
    raise PromQLSyntaxError(f"unterminated string at {i}: {expr!r}")


def _skip_space(expr: str, i: int) -> int:
    while i < len(expr) and expr[i].isspace():
        i += 1
    return i


def _matchers(expr: str, i: int) -> tuple[list[tuple[str, str, str]], int]:
    """Parse ``{label op "value", ...}`` starting at the ``{``; returns the index after ``}``."""
    i += 1
    found = []
    while True:
        i = _skip_space(expr, i)
        if i >= len(expr):
            raise PromQLSyntaxError(f"unclosed label matchers: {expr!r}")
        if expr[i] == "}":
            return found, i + 1
        label = _LABEL.match(expr, i)
        if not label:
            raise PromQLSyntaxError(f"bad label matcher at {i}: {expr!r}")
        i = _skip_space(expr, label.end())
        op = next((o for o in _MATCH_OPS if expr.startswith(o, i)), None)
        if op is None:
            raise PromQLSyntaxError(f"no match operator at {i}: {expr!r}")
        i = _skip_space(expr, i + len(op))
        if i >= len(expr) or expr[i] not in "\"'`":
            raise PromQLSyntaxError(f"label value is not a string at {i}: {expr!r}")
        value, i = _string(expr, i)
        found.append((label.group(), op, value))
        i = _skip_space(expr, i)
        if i < len(expr) and expr[i] == ",":
            i += 1


def _close(expr: str, i: int, opening: str, closing: str) -> int:
    """The index after the bracket matching the one at ``i`` (strings skipped)."""
    depth = 0
    while i < len(expr):
        c = expr[i]
        if c in "\"'`":
            _, i = _string(expr, i)
            continue
        if c == opening:
            depth += 1
        elif c == closing:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise PromQLSyntaxError(f"unbalanced {opening}{closing}: {expr!r}")


def parse(expr: str) -> list[Selector]:
    """Every vector selector in ``expr``, in order (the same metric may appear twice)."""
    if not isinstance(expr, str) or not expr.strip():
        raise PromQLSyntaxError(f"not an expression: {expr!r}")
    if expr.count("(") != expr.count(")"):
        raise PromQLSyntaxError(f"unbalanced parentheses: {expr!r}")
    selectors: list[Selector] = []
    i = 0
    while i < len(expr):
        c = expr[i]
        if c.isspace():
            i += 1
        elif c in "\"'`":
            _, i = _string(expr, i)  # a string argument (label_replace, count_values)
        elif c == "$" or expr.startswith("[[", i):
            variable = _VARIABLE.match(expr, i)
            if not variable:
                raise PromQLSyntaxError(f"bad variable at {i}: {expr!r}")
            i = variable.end()
        elif c == "[":
            i = _close(expr, i, "[", "]")  # a range or a subquery's resolution
        elif c == "{":
            matchers, i = _matchers(expr, i)  # {__name__="..."} with no name in front
            names = [v for label, op, v in matchers if label == "__name__" and op == "="]
            if not names:
                raise PromQLSyntaxError(f"a selector without a metric name: {expr!r}")
            selectors.append(Selector(names[0], matchers))
        elif c.isdigit() or (c == "." and i + 1 < len(expr) and expr[i + 1].isdigit()):
            number = _NUMBER.match(expr, i)
            i = number.end() if number else i + 1
        elif ident := _IDENT.match(expr, i):
            word = ident.group()
            j = _skip_space(expr, ident.end())
            if word in _GROUPING:
                i = _close(expr, j, "(", ")") if j < len(expr) and expr[j] == "(" else j
            elif word in _KEYWORDS or word in _AGGREGATIONS:
                i = j  # (``sum by (x) (...)``: the aggregation before its grouping)
            elif j < len(expr) and expr[j] == "(":
                i = j  # a function or aggregation: its arguments are read next
            elif j < len(expr) and expr[j] == "{":
                matchers, i = _matchers(expr, j)
                selectors.append(Selector(word, matchers))
            else:
                selectors.append(Selector(word))
                i = ident.end()
        else:
            i += 1  # operators, parentheses, commas
    return selectors


def grouping_labels(expr: str) -> set[str]:
    """Labels named by ``by``/``without``/``on``/``ignoring``/``group_*`` clauses."""
    labels: set[str] = set()
    stripped = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    for match in re.finditer(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(", stripped):
        end = _close(stripped, match.end() - 1, "(", ")")
        inner = stripped[match.end() : end - 1]
        labels |= {part.strip() for part in inner.split(",") if part.strip()}
    return labels


def label_values_selector(query: str) -> list[Selector]:
    """The metric a Grafana ``label_values(metric, label)`` variable query reads (none for
    ``label_values(label)``); any other query is PromQL."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*", query)
    if match:
        return parse(match.group(1))
    if re.fullmatch(r"\s*label_values\(\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*", query):
        return []
    return parse(query)


_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "gauge": ("",),
    "unknown": ("",),
}


@dataclass
class Exported:
    """What one scrape says: the series names a query may use, and per name the labels and
    the values each label was seen with."""

    names: set[str] = field(default_factory=set)
    labels: dict[str, dict[str, set[str]]] = field(default_factory=dict)

    def merge(self, other: Exported) -> Exported:
        merged = Exported(self.names | other.names, {k: dict(v) for k, v in self.labels.items()})
        for name, labels in other.labels.items():
            mine = merged.labels.setdefault(name, {})
            for label, values in labels.items():
                mine[label] = mine.get(label, set()) | values
        return merged


def exported(text: str) -> Exported:
    """The series of a Prometheus text exposition (families without samples included: a
    labelled counter nobody incremented yet is still a name a query may use)."""
    out = Exported()
    for family in text_string_to_metric_families(text):
        for suffix in _SUFFIXES.get(family.type, ("",)):
            out.names.add(family.name + suffix)
        for sample in family.samples:
            out.names.add(sample.name)
            labels = out.labels.setdefault(sample.name, {})
            for label, value in sample.labels.items():
                labels.setdefault(label, set()).add(value)
    return out
