"""Dataclasses from plain data (JSON/YAML mappings), with errors that name the source.

Every reader of a user file goes through here, so each bad file is one ``InputError``
naming the file and, where it can be known, the line and field: unreadable files, bytes
that are not UTF-8, malformed or too deeply nested JSON/YAML, and values of the wrong
type (``requests: 30.5``, ``gpus: '8'``, YAML 1.1's ``1e12``, which is a string).
Mappings and lists read from YAML or JSON remember where each of their values starts
(``YamlMap``, ``YamlList``; ``JsonMap``, ``JsonList`` find it on demand), so that an
error about a value names its line and column:
``s.yaml:7:9: point {} base: field 'gpus' must be an int, got the string '8'``.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import math
import os
import re
import sys
import types
import typing
import weakref
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ramp.errors import InputError

T = TypeVar("T")


def from_mapping(cls: type[T], data: Any, where: str) -> T:
    """``cls(**data)`` for a dataclass; a non-mapping, unknown keys, missing fields,
    values of the wrong type (per the field annotations) and invalid values all raise
    InputError prefixed with ``where`` (file, line, field). Nested dataclass fields
    given as mappings are built the same way. For ``data`` from ``read_yaml`` the line
    is that of the offending value (of the mapping when no one field is to blame); places
    are only looked up for an error (a JSON file's are found on demand)."""
    if not isinstance(data, dict):
        raise _placed(f"{locate(where, data)}: expected a mapping, got {type_name(data)}",
                      data)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = [key for key in data if key not in known]
    if unknown:
        raise _placed(locate(f"{where}: unknown field(s) {sorted(map(str, unknown))}; "
                             f"known: {sorted(known)}", data, unknown[0]), data)
    hints = typing.get_type_hints(cls)
    values = {name: _typed_at(hints[name], data, name, f"{where}: field {name!r}",
                              f"{where}.{name}") for name in data}
    try:
        return cls(**values)
    except TypeError as exc:  # a missing required field
        raise _placed(f"{locate(where, data)}: {exc}", data) from None
    except InputError as exc:
        raise _placed(locate_error(where, exc, data), data) from None


def _typed_at(hint: Any, data: Any, key: Any, field: str, where: str) -> Any:
    """``_typed`` of ``data[key]``; an error not placed deeper is placed at that value."""
    try:
        return _typed(hint, data[key], field, where)
    except InputError as exc:
        if getattr(exc, "placed", False):
            raise
        raise _placed(locate(str(exc), data, key), data) from None


def _placed(message: str, data: Any) -> InputError:
    """An InputError about ``data``, its message placed by ``locate``: enclosing checks
    keep that place when ``data`` knows where it was read (else they give theirs)."""
    error = InputError(message)
    error.placed = mark_of(data) is not None
    return error


def _typed(hint: Any, value: Any, field: str, where: str) -> Any:
    """``value`` checked against annotation ``hint`` (the annotations dataclasses here
    use: int, float, str, bool, X | None, tuple[X, ...], dict[K, V], dataclasses, Any)."""
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
        try:
            number = float(value)
        except OverflowError:  # an int beyond every float
            number = math.inf
        if not math.isfinite(number):
            raise InputError(f"{field} must be a finite number, got {value!r}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise InputError(f"{field} must be a string, got {value!r}")
        return value
    if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{field} must be a list, got {_shown(value)}")
        return tuple(_typed_at(args[0], value, i, f"{field}[{i}]", f"{where}[{i}]")
                     for i in range(len(value)))
    if typing.get_origin(hint) is dict:
        if not isinstance(value, dict):
            raise InputError(f"{field} must be a mapping, got {_shown(value)}")
        return {_typed(args[0], k, f"{field} key {k!r}", where):
                _typed_at(args[1], value, k, f"{field}[{k!r}]", f"{where}[{k!r}]") for k in value}
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


GZIP_MAGIC = b"\x1f\x8b"  # the first bytes of a gzip stream


def read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of a file, plain or gzip-compressed (large results files are
    committed compressed); unreadable files, corrupt gzip streams and bytes that are not
    UTF-8 raise InputError naming the file (and the line of the first bad byte)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read {what} ({os_reason(exc)})") from None
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"{path}: {what} is a corrupt or truncated gzip stream "
                             f"({exc})") from None
    return decode_utf8(data, str(path), what)


def write_atomically(path: str | Path, write: Callable[[Path], None], what: str) -> Path:
    """Write ``path`` through ``write(tmp)`` on a temporary file beside it, renamed over
    ``path`` once complete: a full disk or a failed write leaves an existing file as it
    was (and no half file), reported as one ``InputError`` naming ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)  # a stale one, should a writer append
        write(tmp)
        os.replace(tmp, path)
    except InputError:  # what ``write`` refused to write (a step the reader would refuse)
        raise
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot write {what} ({os_reason(exc)})") from None
    finally:
        if tmp.parent.is_dir():
            tmp.unlink(missing_ok=True)
    return path


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """``fig.savefig`` through ``write_atomically`` (the format from the file's suffix)."""
    fmt = Path(path).suffix[1:].lower() or None
    return write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=fmt), "plot")


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
    file, and for bad JSON the line and column. Objects and arrays come back as JsonMap
    and JsonList, which know where each value starts, as read_yaml's do."""
    text = read_text(path, what)
    try:
        data = _located_json(json.loads(text, object_pairs_hook=JsonMap), _JsonText(
            text, str(path)), None)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})"
                         ) from None
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise InputError(f"{path}: JSON nested too deeply") from None
    return data


def _located_json(data: Any, parent: Any, key: Any) -> Any:
    """``data`` (what json.loads builds with JsonMap as the hook) with every array a
    JsonList and every container told where it sits (``parent[key]``; for the root,
    the document's text), so that it can find its marks when asked."""
    if type(data) is list:
        data = JsonList(data)
    elif type(data) is not JsonMap:
        return data
    data._origin = (parent, None) if key is None else (weakref.ref(parent), key)
    if not _CONTAINERS.isdisjoint(map(type, data.values() if type(data) is JsonMap else data)):
        for k, v in (data.items() if type(data) is JsonMap else enumerate(data)):
            if type(v) in _CONTAINERS:  # replacing a value: the dict keeps its size
                data[k] = _located_json(v, data, k)
    return data


@dataclasses.dataclass(frozen=True)
class _JsonText:
    """The text of a JSON document and the name errors give it."""

    text: str
    source: str

    def mark(self, offset: int, line: int) -> Mark:
        """The Mark of character ``offset``, which is on ``line``."""
        return Mark(self.source, line, offset - self.text.rfind("\n", 0, offset))


_SCAN = json.JSONDecoder().scan_once  # the C scanner: one value from an offset
_SPACE = re.compile(r"[ \t\n\r]*")


class _Located:
    """A JSON container whose marks are found when first asked for: json.loads parses
    at C speed, and where a container's values start is only looked up (skipping over
    each value's text with the C scanner) when a check or an error asks for it."""

    # (weak reference to the parent, key), or (document, None) for the root: a value kept
    # after loading (a provenance) does not keep the whole document alive
    _origin: tuple[Any, Any]

    @functools.cached_property
    def _start(self) -> tuple[_JsonText, int, int]:
        """The document, and the offset and line of this container's first character
        (AttributeError once the document is gone)."""
        parent, key = self._origin
        if isinstance(parent, _JsonText):
            offset = _SPACE.match(parent.text).end()
            return parent, offset, parent.text.count("\n", 0, offset) + 1
        parent = parent()
        if parent is None:
            raise AttributeError("the document this value was read from is gone")
        return (parent._start[0], *parent._places[key])

    @functools.cached_property
    def _places(self) -> dict[Any, tuple[int, int]]:
        """The offset and line where each value starts, by key (by index for a list)."""
        doc, offset, line = self._start
        text, places, index = doc.text, {}, 0
        i = _SPACE.match(text, offset + 1).end()
        while text[i] not in "]}":
            if isinstance(self, dict):
                key, i = _SCAN(text, i)
                i = _SPACE.match(text, _SPACE.match(text, i).end() + 1).end()  # ':'
            else:
                key, index = index, index + 1
            line += text.count("\n", offset, i)
            offset = i
            places[key] = (i, line)  # a repeated key: the last one, as json.loads
            i = _SPACE.match(text, _SCAN(text, i)[1]).end()
            if text[i] == ",":
                i = _SPACE.match(text, i + 1).end()
        return places

    def __copy__(self) -> Any:
        """A shallow copy that still knows where it was read (``copy.copy``)."""
        new = type(self)(self)
        new.__dict__.update(self.__dict__)
        return new

    def __reduce_ex__(self, protocol: Any) -> tuple:
        """Pickles and deep copies are a YamlMap or YamlList with the marks found now."""
        state = {"mark": mark_of(self), "marks": getattr(self, "marks", ())}
        if isinstance(self, dict):
            return YamlMap, (), state, None, iter(self.items())
        return YamlList, (), state, iter(self), None

    @functools.cached_property
    def mark(self) -> Mark:
        doc, offset, line = self._start
        return doc.mark(offset, line)

    @functools.cached_property
    def marks(self) -> Any:
        doc = self._start[0]
        found = {key: doc.mark(*place) for key, place in self._places.items()}
        return found if isinstance(self, dict) else list(found.values())


@dataclasses.dataclass(frozen=True)
class Mark:
    """Where a YAML or JSON value starts: ``file:line:column``, both counted from 1."""

    source: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.source}:{self.line}:{self.column}"


class YamlMap(dict):
    """A mapping read by ``read_yaml``: ``mark`` is where it starts, ``marks[key]``
    where the value of ``key`` starts. Deep copies and pickles keep both."""

    mark: Mark | None = None
    marks: Mapping[Any, Mark] = types.MappingProxyType({})


class YamlList(list):
    """A sequence read by ``read_yaml``: ``mark`` is where it starts, ``marks[i]``
    where item ``i`` starts."""

    mark: Mark | None = None
    marks: Sequence[Mark] = ()


class JsonMap(_Located, YamlMap):
    """An object read by ``read_json``: a YamlMap whose marks are found on demand."""


class JsonList(_Located, YamlList):
    """An array read by ``read_json``: a YamlList whose marks are found on demand."""


_CONTAINERS = frozenset((JsonMap, list))  # what json.loads builds with JsonMap as hook


def type_name(value: Any) -> str:
    """The name of ``value``'s type for a message, as YAML's reader knows it: ``list``
    and ``dict``, not YamlList and YamlMap."""
    return ("dict" if isinstance(value, YamlMap) else "list" if isinstance(value, YamlList)
            else type(value).__name__)


def mark_of(data: Any, key: Any = None) -> Mark | None:
    """Where ``data[key]`` starts, else where ``data`` starts (None: not from YAML)."""
    try:
        return data.marks[key]
    except (AttributeError, KeyError, IndexError, TypeError):
        return getattr(data, "mark", None)


def locate(text: str, data: Any, key: Any = None) -> str:
    """``text``, a message that starts with a file name, with the line and column of
    ``data[key]`` (of ``data`` when that value has no known place) after the name,
    replacing the place already there; unchanged unless ``data`` came from
    ``read_yaml`` or ``read_json`` of that file."""
    mark = mark_of(data, key)
    found = mark and re.match(re.escape(mark.source) + r"(:\d+:\d+)?(?=[: ]|$)", text)
    if not found:
        return text
    rest = text[found.end():]
    return f"{mark}{':' if rest.startswith(' ') else ''}{rest}"


def locate_error(where: str, exc: Exception, data: Any) -> str:
    """``where: exc`` at the value of the one key of ``data`` that the message of
    ``exc`` names (a range check such as ``gpus must be in 1..1024``), else at
    ``data`` itself."""
    named = [key for key in data if isinstance(key, str)
             and re.search(rf"\b{re.escape(key)}\b", str(exc))] if isinstance(data, dict) else []
    return locate(f"{where}: {exc}", data, named[0] if len(named) == 1 else None)


def relocate(data: Any, key: Any, source: Any, source_key: Any) -> None:
    """Record that ``data[key]`` now holds the value read at ``source[source_key]`` (a
    what-if sweep value set into a section), so that errors about it name that place."""
    if isinstance(data, YamlMap):
        mark = mark_of(source, source_key) if isinstance(source, YamlList) else None
        data.marks = {**{k: m for k, m in data.marks.items() if k != key},
                      **({key: mark} if mark else {})}


def _node_mark(node: Any) -> Mark:
    """Where a yaml node starts (its marks count from 0)."""
    return Mark(node.start_mark.name, node.start_mark.line + 1, node.start_mark.column + 1)


@functools.cache
def _located_loader() -> type:
    """yaml.SafeLoader that builds YamlMap and YamlList (and refuses integers of more
    digits than Python converts with a YAML error at their line)."""
    import yaml

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Any:
        data = YamlMap()
        data.mark = _node_mark(node)
        yield data
        seen = set()
        for key_node, _ in node.value:  # YAML keeps the last of two equal keys: refuse
            key = loader.construct_object(key_node)
            if not isinstance(key, (str, int, float)) or key_node.tag.endswith(":merge"):
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice in one mapping",
                    key_node.start_mark)
            seen.add(key)
        data.update(loader.construct_mapping(node))  # also merges '<<' keys into node
        data.marks = {loader.construct_object(k): _node_mark(v) for k, v in node.value}

    def integer(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
        try:
            return yaml.SafeLoader.construct_yaml_int(loader, node)
        except ValueError:  # more digits than int() converts
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of more than {sys.get_int_max_str_digits()} digits",
                node.start_mark) from None

    def sequence(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> Any:
        data = YamlList()
        data.mark = _node_mark(node)
        yield data
        data.extend(loader.construct_sequence(node))
        data.marks = [_node_mark(item) for item in node.value]

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("tag:yaml.org,2002:map", mapping)
    Loader.add_constructor("tag:yaml.org,2002:seq", sequence)
    Loader.add_constructor("tag:yaml.org,2002:int", integer)
    return Loader


def read_yaml(path: str | Path, what: str, mapping: bool = False) -> Any:
    """Parse a YAML file (safe loader); errors name the file and the line. Mappings and
    sequences come back as YamlMap and YamlList, which know where each value starts
    (``locate`` puts that place into a message that starts with ``str(path)``). With
    ``mapping``, the document must be a mapping (an empty file reads as an empty one)."""
    import yaml

    text = read_text(path, what)
    try:
        return _load(_located_loader(), text, str(path), what if mapping else None)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        at = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise InputError(f"{at}: not valid YAML ({exc.problem})") from None
    except yaml.reader.ReaderError as exc:  # a control character, found before parsing
        line = text.count("\n", 0, exc.position) + 1
        raise InputError(f"{path}:{line}: not valid YAML (character {chr(exc.character)!r}: "
                         f"{exc.reason})") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    except RecursionError:
        raise InputError(f"{path}: YAML nested too deeply") from None


def _load(loader_class: type, text: str, source: str, mapping: str | None) -> Any:
    """The one document of ``text``, every mark naming ``source``; a ``mapping`` (what
    the file holds, for the message) unless that is None."""
    loader = loader_class(text)  # checks the characters: may raise a ReaderError
    loader.name = source
    try:
        node = loader.get_single_node()
        data = None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()
    if mapping is not None and data is None:  # an empty file: an empty mapping at 1:1
        data = YamlMap()
        data.mark = Mark(source, 1, 1)
    if mapping is not None and not isinstance(data, dict):
        raise InputError(f"{_node_mark(node)}: {mapping} must be a mapping, got "
                         f"{type_name(data)}")
    return data
