"""Bedrock request bodies checked against botocore's own service model before anything reads them.

botocore validates parameters on the client, so boto3 never sends an unknown member, a tag whose
value is an object or a string where an integer belongs; raw HTTP clients can. AWS refuses such
bodies, and so does tuneforge: every member of every structure must exist in the operation's input
shape, with the JSON type the shape says. Lone UTF-16 surrogates (``"\\ud800"``), which JSON
allows but no string can be stored or encoded with, are refused here too, naming the member. The
finer constraints (lengths, patterns, enums) stay with the parsers in ``schemas.py``; the shapes'
regular expressions are not run, because some of them backtrack exponentially.
"""

from __future__ import annotations

import functools
from typing import Any

import botocore.session
from botocore.model import ListShape, MapShape, OperationModel, Shape, StructureShape

from tuneforge.api.bodies import json_object
from tuneforge.errors import constraint_errors

MAX_VIOLATIONS = 10
"""Enough to fix a body in one go without echoing a hostile body back in full."""


@functools.cache
def _operation(name: str, service: str) -> OperationModel:
    return botocore.session.get_session().get_service_model(service).operation_model(name)


def parse_body(raw: bytes, operation: str, service: str = "bedrock") -> dict[str, Any]:
    """A request body as a JSON object that fits ``operation``'s input shape (of botocore's
    ``service`` model: ``bedrock``, ``bedrock-agent``, ``bedrock-agent-runtime``), or ValidationException."""
    body = json_object(raw)
    violations: list[str] = []
    input_shape = _operation(operation, service).input_shape
    assert input_shape is not None, operation
    _structure(body, input_shape, "", violations, top=True)
    if violations:
        # A member name may itself hold a lone surrogate: escape it, or the error could not be encoded.
        raise constraint_errors([v.encode("utf-8", "backslashreplace").decode() for v in violations[:MAX_VIOLATIONS]])
    return body


def _path(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _has_lone_surrogate(text: str) -> bool:
    return any("\ud800" <= char <= "\udfff" for char in text)


def _structure(value: dict[str, Any], shape: StructureShape, path: str, violations: list[str], *, top: bool) -> None:
    for name, member in value.items():
        where = _path(path, str(name))
        member_shape = shape.members.get(name)
        if member_shape is None or (top and member_shape.serialization.get("location")):
            violations.append(
                f"Value at '{where}' failed to satisfy constraint: Member is not a member of {shape.name}"
            )
            continue
        if member is not None:
            _check(member, member_shape, where, violations)


def _check(value: Any, shape: Shape, path: str, violations: list[str]) -> None:
    kind = shape.type_name
    if kind == "structure":
        assert isinstance(shape, StructureShape)
        if not isinstance(value, dict):
            violations.append(f"Value at '{path}' failed to satisfy constraint: Member must be a structure")
        else:
            _structure(value, shape, path, violations, top=False)
    elif kind == "list":
        assert isinstance(shape, ListShape)
        if not isinstance(value, list):
            violations.append(f"Value at '{path}' failed to satisfy constraint: Member must be a list")
        else:
            for index, item in enumerate(value):
                if item is not None:
                    _check(item, shape.member, f"{path}.{index + 1}.member", violations)
    elif kind == "map":
        assert isinstance(shape, MapShape)
        if not isinstance(value, dict):
            violations.append(f"Value at '{path}' failed to satisfy constraint: Member must be a map")
        else:
            for key, item in value.items():
                _check(key, shape.key, f"{path}.key", violations)
                _check(item, shape.value, f"{path}.{key}", violations)
    elif kind == "string":
        if not isinstance(value, str):
            violations.append(f"Value at '{path}' failed to satisfy constraint: Member must be a string")
        elif _has_lone_surrogate(value):
            violations.append(
                f"Value at '{path}' failed to satisfy constraint: Member must not contain lone surrogate code points"
            )
    elif kind in ("integer", "long"):
        if not isinstance(value, int) or isinstance(value, bool):
            violations.append(f"Value at '{path}' failed to satisfy constraint: Member must be an integer")
    elif kind in ("float", "double"):
        if not isinstance(value, int | float) or isinstance(value, bool):
            violations.append(f"Value at '{path}' failed to satisfy constraint: Member must be a number")
    elif kind == "boolean":
        if not isinstance(value, bool):
            violations.append(f"Value at '{path}' failed to satisfy constraint: Member must be a boolean")
    elif kind == "timestamp" and (isinstance(value, bool) or not isinstance(value, str | int | float)):
        violations.append(f"Value at '{path}' failed to satisfy constraint: Member must be a timestamp")
