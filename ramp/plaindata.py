"""Dataclasses from plain data (JSON/YAML mappings), with errors that name the source.

Every reader of a user file goes through here, so each bad file is one ``InputError``
naming the file and, where it can be known, the line and field: unreadable files, bytes
that are not UTF-8, malformed or too deeply nested JSON/YAML, and values of the wrong
type (``requests: 30.5``, ``gpus: '8'``, YAML 1.1's ``1e12``, which is a string).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from ramp.errors import InputError

T = TypeVar("T")


def from_mapping(cls: type[T], data: Any, where: str) -> T:
    """``cls(**data)`` for a dataclass; a non-mapping, unknown keys, missing fields,
    values of the wrong type (per the field annotations) and invalid values all raise
    InputError prefixed with ``where`` (file, line, field). Nested dataclass fields
    given as mappings are built the same way."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise InputError(f"{where}: unknown field(s) {sorted(map(str, unknown))}; known: "
                         f"{sorted(known)}")
    hints = typing.get_type_hints(cls)
    values = {name: _typed(hints[name], value, f"{where}: field {name!r}", f"{where}.{name}")
              for name, value in data.items()}
    try:
        return cls(**values)
    except TypeError as exc:  # a missing required field
        raise InputError(f"{where}: {exc}") from None
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None


def _typed(hint: Any, value: Any, field: str, where: str) -> Any:
    """``value`` checked against annotation ``hint`` (the annotations dataclasses here
    use: int, float, str, bool, X | None, tuple[X, ...], dataclasses, Any/dict)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _typed(inner[0], value, field, where) if len(inner) == 1 else value
    if hint is bool:
        if not isinstance(value, bool):
            raise InputError(f"{field} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{field} must be an int, got {_shown(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{field} must be a number, got {_shown(value)}")
        if not math.isfinite(value):
            raise InputError(f"{field} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise InputError(f"{field} must be a string, got {value!r}")
        return value
    if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{field} must be a list, got {_shown(value)}")
        return tuple(_typed(args[0], v, f"{field}[{i}]", f"{where}[{i}]")
                     for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint) and not isinstance(value, hint):
        return from_mapping(hint, value, where)
    return value


def _shown(value: Any) -> str:
    """``value`` for an error message; a string that reads as a number says why it is
    one (YAML 1.1 needs a dot in a float: ``1e12`` is text, ``1.0e+12`` a number)."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return repr(value)
        if "e" in value.lower():
            return (f"the string {value!r} (YAML 1.1 reads an exponent without a dot as "
                    "text: write 1000000000000 or 1.0e+12)")
        return f"the string {value!r} (a number in quotes: drop the quotes)"
    return repr(value)


def read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of a file; unreadable files and bytes that are not UTF-8 raise
    InputError naming the file (and the line of the first bad byte)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read {what} ({os_reason(exc)})") from None
    return decode_utf8(data, str(path), what)


def os_reason(exc: OSError | ValueError) -> str:
    """Why a file operation failed, for a message: the OS's words, or Python's for a
    path it refuses before asking the OS (an embedded null byte)."""
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


def decode_utf8(data: bytes, where: str, what: str, line: int = 1) -> str:
    """``data`` as UTF-8; invalid bytes raise InputError at ``where:<line>``, counting
    lines from ``line``."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        at = line + data.count(b"\n", 0, exc.start)
        raise InputError(f"{where}:{at}: {what} is not UTF-8 text (byte "
                         f"{data[exc.start]:#04x})") from None


def parse_json(text: str, where: str) -> Any:
    """``json.loads`` of one JSON document or JSONL line; bad syntax and nesting too deep
    for the parser raise InputError at ``where`` (``file:line`` for a JSONL line)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    except ValueError as exc:  # an integer literal of more digits than Python converts
        raise InputError(f"{where}: not valid JSON ({exc})") from None
    except RecursionError:
        raise InputError(f"{where}: JSON nested too deeply") from None


def read_json(path: str | Path, what: str) -> Any:
    """Parse a JSON file; unreadable or malformed files raise InputError naming the
    file, and for bad JSON the line and column."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})"
                         ) from None
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise InputError(f"{path}: JSON nested too deeply") from None


def read_yaml(path: str | Path, what: str) -> Any:
    """Parse a YAML file (safe loader); errors name the file and the line."""
    import yaml

    text = read_text(path, what)
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        at = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise InputError(f"{at}: not valid YAML ({exc.problem})") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({exc})") from None
    except RecursionError:
        raise InputError(f"{path}: YAML nested too deeply") from None
