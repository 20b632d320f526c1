"""Dataclasses from plain data (JSON/YAML mappings), with errors that name the source."""

from __future__ import annotations

from dataclasses import fields
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
