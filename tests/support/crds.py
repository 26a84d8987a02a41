"""Custom resources validated against schemas of our own, as the API server would validate them.

The schemas are ours, written from the documented APIs (cert-manager's Certificate, Issuer and
ClusterIssuer; the SPIRE Controller Manager's ClusterSPIFFEID), one file per API in
tests/k8s/testdata/crds (``*.schema.yaml``; its README says what each covers). Each file names
the ``apiVersion`` and ``kinds`` it validates and gives one JSON Schema (OpenAPI v3 style, with
its ``definitions``) for the whole object. A CRD's schema is what the API server validates a
custom resource with and, with ``kubectl apply``'s default field validation (``Strict``), it
refuses fields the schema does not declare. So here every object schema that declares
``properties`` and neither ``additionalProperties`` nor ``x-kubernetes-preserve-unknown-fields``
is closed (``additionalProperties: false``): a typo such as ``rotationPolicy`` one level too
high fails the test, as it would fail ``apply``. A schema file that is malformed fails loudly
(:class:`SchemaFileError`) rather than validating nothing.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

__all__ = ["CRD_DIR", "CrdValidationError", "SchemaFileError", "known", "validate"]

CRD_DIR = Path(__file__).resolve().parents[1] / "k8s" / "testdata" / "crds"
_FILE_KEYS = {"apiVersion", "kinds", "schema", "definitions"}


class CrdValidationError(ValueError):
    """A custom resource the API server would refuse."""


class SchemaFileError(ValueError):
    """A schema file in CRD_DIR that is not one our loader understands."""


@dataclass(frozen=True)
class _Kind:
    api_version: str
    kind: str


def _closed(schema: Any) -> Any:
    if isinstance(schema, dict):
        schema = {k: _closed(v) for k, v in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    return schema


def _load(path: Path) -> tuple[list[_Kind], dict[str, Any]]:
    """The kinds one schema file covers, and its closed schema (``$ref`` targets included)."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SchemaFileError(f"{path.name}: not YAML: {exc}") from None
    if not isinstance(doc, dict) or not {"apiVersion", "kinds", "schema"} <= doc.keys():
        raise SchemaFileError(f"{path.name}: needs apiVersion, kinds and schema")
    if unknown := doc.keys() - _FILE_KEYS:
        raise SchemaFileError(f"{path.name}: unknown keys {sorted(unknown)}")
    api_version, kinds, schema = doc["apiVersion"], doc["kinds"], doc["schema"]
    if not isinstance(api_version, str) or "/" not in api_version:
        raise SchemaFileError(f"{path.name}: apiVersion must be GROUP/VERSION")
    if not isinstance(kinds, list) or not kinds or not all(isinstance(k, str) for k in kinds):
        raise SchemaFileError(f"{path.name}: kinds must be a non-empty list of names")
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise SchemaFileError(f"{path.name}: schema must be an object schema")
    full = _closed({**schema, "definitions": doc.get("definitions", {})})
    try:
        jsonschema.Draft4Validator.check_schema(full)
    except jsonschema.SchemaError as exc:
        raise SchemaFileError(f"{path.name}: not a valid schema: {exc.message}") from None
    return [_Kind(api_version, kind) for kind in kinds], full


@cache
def _schemas() -> dict[_Kind, dict[str, Any]]:
    found: dict[_Kind, dict[str, Any]] = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        if not path.name.endswith(".schema.yaml"):
            raise SchemaFileError(f"{path.name}: only *.schema.yaml files belong in {CRD_DIR}")
        kinds, schema = _load(path)
        for key in kinds:
            if key in found:
                raise SchemaFileError(f"{path.name}: {key.api_version} {key.kind} twice")
            found[key] = schema
    return found


def _key(doc: Any) -> _Kind:
    if not isinstance(doc, dict):
        raise CrdValidationError(f"not an object: {type(doc).__name__}")
    api_version, kind = doc.get("apiVersion", ""), doc.get("kind", "")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        raise CrdValidationError("apiVersion and kind must be strings")
    return _Kind(api_version, kind)


def known(doc: dict[str, Any]) -> bool:
    """Whether one of our schemas covers this object's apiVersion and kind."""
    return _key(doc) in _schemas()


def validate(doc: dict[str, Any]) -> None:
    """Raise :class:`CrdValidationError` naming the first field our schema refuses."""
    key = _key(doc)
    schema = _schemas().get(key)
    if schema is None:
        raise CrdValidationError(f"no schema for {key.api_version} {key.kind}")
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(name, str) or not name:
        raise CrdValidationError(f"{key.kind}: metadata.name is required")
    error = _best(jsonschema.Draft4Validator(schema).iter_errors(doc))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise CrdValidationError(f"{key.kind} {name}: {where}: {_message(error)}")


def _rule(error: jsonschema.ValidationError) -> str | None:
    """The ``description`` of a rule our schemas spread over anyOf/oneOf branches."""
    if error.validator not in ("anyOf", "oneOf") or not isinstance(error.schema, dict):
        return None
    rule = error.schema.get("description")
    return rule if isinstance(rule, str) else None


def _best(errors: Iterable[jsonschema.ValidationError]) -> jsonschema.ValidationError | None:
    """jsonschema's ``best_match``, except that it stops at a described anyOf/oneOf: the
    branch it would descend into (``operator`` should not be ``In``) misleads, the rule does not."""
    relevance = jsonschema.exceptions.relevance
    best = max(errors, key=relevance, default=None)
    while best is not None and best.context and _rule(best) is None:
        smallest = heapq.nsmallest(2, best.context, key=relevance)
        if len(smallest) == 2 and relevance(smallest[0]) == relevance(smallest[1]):
            break
        best = smallest[0]
    return best


def _message(error: jsonschema.ValidationError) -> str:
    return _rule(error) or error.message
