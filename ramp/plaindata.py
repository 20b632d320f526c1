"""Dataclasses from plain data (JSON/YAML mappings), with errors that name the source."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from ramp.errors import InputError

T = TypeVar("T")


def from_mapping(cls: type[T], data: Any, where: str) -> T:
    """``cls(**data)`` for a dataclass; a non-mapping, unknown keys, missing fields and
    invalid values all raise InputError prefixed with ``where`` (file, line, field)."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise InputError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    try:
        return cls(**data)
    except TypeError as exc:  # a missing required field
        raise InputError(f"{where}: {exc}") from None
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None


def read_json(path: str | Path, what: str) -> Any:
    """Parse a JSON file; unreadable or malformed files raise InputError naming the
    file, and for bad JSON the line and column."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what} ({exc.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})"
                         ) from None
