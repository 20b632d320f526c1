"""Routing traces (``trace.jsonl``): the expert histograms a server saw, step by step.

Line 1 is a header (format version, model shape, source, recording engine, parallelism);
every further line is one forward step: its phase, token count and one expert histogram
per MoE layer, optionally the token-level top-k expert ids. traces/FORMAT.md is the spec.

Traces are written while a server runs and can grow to many GB, so:

- ``TraceReader`` streams line by line and never holds more than one step; it reads
  gzip-compressed traces as well, and bytes that are not UTF-8 are a malformed line;
- ``TraceWriter`` appends whole lines with one ``write`` under an exclusive lock on an
  ``O_APPEND`` descriptor, so several writer processes and a concurrent reader never see
  interleaved lines. Under the same lock, before every append, a fragment left at the
  end by a writer that died mid-line (or whose write failed part-way) is cut, or ended
  with a newline when it is a complete step, so no append is ever glued to a fragment;
- a torn last line (no newline at the end: the server died mid-write, or is writing it
  now) is reported with a ``TraceWarning`` and skipped; a malformed line anywhere else,
  the last one included when it ends with a newline, raises ``InputError`` naming
  ``file:line`` and the field, or with ``strict=False`` is skipped and counted.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import math
import os
import warnings
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from ramp.errors import InputError, RampError
from ramp.plaindata import GZIP_MAGIC, decode_utf8, os_reason, parse_json, write_atomically
from ramp.problem import DTYPE_BYTES, MAX_EXPERTS, validate_histogram

TRACE_FORMAT = "ramp-trace/1"
PHASES = ("prefill", "decode", "mixed")
MAX_LAYERS = 1024
_MODEL_FIELDS = ("name", "layers", "moe_layers", "num_experts", "top_k", "hidden",
                 "moe_intermediate", "dtype")


class TraceWarning(UserWarning):
    """A trace problem that does not stop a replay (a torn last line, skipped lines)."""


@dataclass(frozen=True)
class TraceHeader:
    """What a trace was recorded on: enough to check it matches the model being simulated.

    Histograms are always over all ``num_experts`` routed experts as the router chose them
    (global expert ids), whatever ``tp``/``ep`` the recording server ran with; those two
    fields are provenance only.
    """

    model: str
    layers: int
    moe_layers: int
    num_experts: int
    top_k: int
    hidden: int
    moe_intermediate: int
    dtype: str = "bfloat16"
    source: str = ""          # "recorded", "synthetic:<preset>", "converted:<origin>"
    engine: str = ""          # recording engine ("vllm", "sglang", "ramp.traces")
    engine_version: str = ""
    tp: int = 1
    ep: int = 1
    meta: dict[str, Any] = field(default_factory=dict)  # free-form provenance

    def __post_init__(self) -> None:
        for name in ("layers", "moe_layers", "num_experts", "top_k", "hidden",
                     "moe_intermediate", "tp", "ep"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InputError(f"field {name!r} must be a positive int, got {value!r}")
        if self.moe_layers > self.layers:
            raise InputError(f"field 'moe_layers'={self.moe_layers} exceeds layers={self.layers}")
        if self.top_k > self.num_experts:
            raise InputError(f"field 'top_k'={self.top_k} exceeds num_experts={self.num_experts}")
        if self.num_experts > MAX_EXPERTS or self.moe_layers > MAX_LAYERS:
            raise InputError(f"fields 'num_experts'={self.num_experts}, 'moe_layers'="
                             f"{self.moe_layers}: at most {MAX_EXPERTS} and {MAX_LAYERS}")
        if not isinstance(self.dtype, str) or self.dtype not in DTYPE_BYTES:
            raise InputError(f"field 'dtype' {self.dtype!r} not in {sorted(DTYPE_BYTES)}")
        if not isinstance(self.model, str) or not self.model:
            raise InputError("field 'model.name' must be a non-empty string")
        if not isinstance(self.meta, dict):
            raise InputError("field 'meta' must be an object")

    @classmethod
    def from_model(cls, model: Any, **kwargs: Any) -> TraceHeader:
        """Header for a ``ramp.models.MoEModel`` (its shape fields), plus provenance."""
        shape = {f: getattr(model, f) for f in _MODEL_FIELDS if f != "name"}
        return cls(model=model.name, **shape, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        model = {"name": self.model, **{f: getattr(self, f) for f in _MODEL_FIELDS[1:]}}
        return {
            "format": TRACE_FORMAT,
            "model": model,
            "source": self.source,
            "engine": {"name": self.engine, "version": self.engine_version},
            "parallelism": {"tp": self.tp, "ep": self.ep},
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str) -> TraceHeader:
        if not isinstance(data, dict):
            raise InputError(f"{where}: the header must be a JSON object")
        if data.get("format") != TRACE_FORMAT:
            raise InputError(f"{where}: field 'format' is {data.get('format')!r}, this RaMP "
                             f"reads {TRACE_FORMAT!r}")
        model = data.get("model")
        if not isinstance(model, dict):
            raise InputError(f"{where}: field 'model' must be an object")
        missing = [f for f in _MODEL_FIELDS if f not in model and f != "dtype"]
        if missing:
            raise InputError(f"{where}: field 'model' lacks {missing}")
        engine = data.get("engine", {})
        par = data.get("parallelism", {})
        if not isinstance(engine, dict) or not isinstance(par, dict):
            raise InputError(f"{where}: fields 'engine' and 'parallelism' must be objects")
        try:
            return cls(
                model=model["name"],
                **{f: model[f] for f in _MODEL_FIELDS[1:] if f in model},
                source=str(data.get("source", "")),
                engine=str(engine.get("name", "")),
                engine_version=str(engine.get("version", "")),
                tp=par.get("tp", 1), ep=par.get("ep", 1),
                meta=data.get("meta", {}),
            )
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None

    def shape(self) -> tuple[Any, ...]:
        """Model name and shape: traces with equal shapes can share steps."""
        return (self.model, *(getattr(self, f) for f in _MODEL_FIELDS[1:]))


@dataclass(frozen=True)
class TraceStep:
    """One forward step: ``hists[l]`` is MoE layer ``l``'s expert histogram (sums to
    ``tokens * top_k``); ``topk_ids[l, t]`` token ``t``'s experts, when recorded."""

    step: int
    phase: str
    tokens: int
    hists: np.ndarray                   # [moe_layers, num_experts] int64
    time: float | None = None           # seconds since the recording started
    topk_ids: np.ndarray | None = None  # [moe_layers, tokens, top_k] int
    step_ms: float | None = None        # measured wall time of the step (recorder)

    def to_json(self) -> str:
        data: dict[str, Any] = {"step": self.step}
        if self.time is not None:
            data["time"] = round(float(self.time), 6)
        data.update(phase=self.phase, tokens=self.tokens)
        if self.step_ms is not None:
            data["step_ms"] = round(float(self.step_ms), 4)
        data["layers"] = self.hists.tolist()
        if self.topk_ids is not None:
            data["topk_ids"] = self.topk_ids.tolist()
        return json.dumps(data, separators=(",", ":"))


def parse_step(text: str, header: TraceHeader, where: str) -> TraceStep:
    """Parse and validate one step line; ``where`` is ``file:line`` for error messages."""
    data = parse_json(text, where)
    if not isinstance(data, dict):
        raise InputError(f"{where}: a step must be a JSON object")
    for name in ("step", "phase", "tokens", "layers"):
        if name not in data:
            raise InputError(f"{where}: missing field {name!r}")
    step, tokens, phase = data["step"], data["tokens"], data["phase"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise InputError(f"{where}: field 'step' must be an int >= 0, got {step!r}")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens <= 0:
        raise InputError(f"{where}: field 'tokens' must be an int > 0, got {tokens!r}")
    if phase not in PHASES:
        raise InputError(f"{where}: field 'phase' is {phase!r}, not one of {PHASES}")
    time = data.get("time")
    if time is not None and not _finite_at_least_0(time):
        raise InputError(f"{where}: field 'time' must be a finite number >= 0, got {time!r}")
    step_ms = data.get("step_ms")
    if step_ms is not None and not (_finite_at_least_0(step_ms) and step_ms > 0):
        raise InputError(f"{where}: field 'step_ms' must be a finite number > 0, got "
                         f"{step_ms!r}")
    hists = _parse_hists(data["layers"], header, tokens, where)
    ids = data.get("topk_ids")
    topk = None if ids is None else _parse_topk(ids, header, tokens, hists, where)
    return TraceStep(step, phase, tokens, hists, None if time is None else float(time), topk,
                     None if step_ms is None else float(step_ms))


def _finite_at_least_0(value: Any) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and math.isfinite(value) and value >= 0)


def _parse_hists(layers: Any, header: TraceHeader, tokens: int, where: str) -> np.ndarray:
    if not isinstance(layers, list) or len(layers) != header.moe_layers:
        got = len(layers) if isinstance(layers, list) else type(layers).__name__
        raise InputError(f"{where}: field 'layers' must list {header.moe_layers} histograms "
                         f"(one per MoE layer), got {got}")
    try:
        arr = np.asarray(layers)
    except ValueError:
        arr = np.empty(0)
    total = tokens * header.top_k
    # Fast path: one vectorised check; on failure find the first bad layer for the message.
    if (arr.shape == (header.moe_layers, header.num_experts) and arr.dtype.kind in "iu"
            and np.all(arr >= 0) and np.all(arr.sum(axis=1) == total)
            and np.all(arr <= tokens)):
        return arr.astype(np.int64)
    for i, hist in enumerate(layers):
        h = validate_histogram(hist, header.num_experts, tokens, header.top_k,
                               where=f"{where} layers[{i}]")
        if h.max(initial=0) > tokens:
            raise InputError(f"{where} layers[{i}]: expert {int(h.argmax())} has "
                             f"{int(h.max())} rows but the step has {tokens} tokens")
    raise InputError(f"{where}: field 'layers' is not a matrix of whole counts")


def _parse_topk(ids: Any, header: TraceHeader, tokens: int, hists: np.ndarray,
                where: str) -> np.ndarray:
    shape = (header.moe_layers, tokens, header.top_k)
    try:
        arr = np.asarray(ids)
    except ValueError:
        arr = np.empty(0)
    if arr.shape != shape or arr.dtype.kind not in "iu":
        raise InputError(f"{where}: field 'topk_ids' must be ints of shape {list(shape)}, "
                         f"got shape {list(arr.shape)}")
    if arr.size and (arr.min() < 0 or arr.max() >= header.num_experts):
        raise InputError(f"{where}: field 'topk_ids' has an expert id outside "
                         f"0..{header.num_experts - 1}")
    for layer in range(shape[0]):
        counts = np.bincount(arr[layer].ravel(), minlength=header.num_experts)
        if not np.array_equal(counts, hists[layer]):
            raise InputError(f"{where}: field 'topk_ids[{layer}]' does not match "
                             f"layers[{layer}]")
    return arr.astype(np.int32)


_TAIL_CHUNK = 1 << 20  # bytes read at a time when searching back for a line break


class _Lines:
    """The lines of a (possibly gzip-compressed) text file as ``(number, text, complete)``:
    ``complete`` is False only for a last line with no newline. Bytes that are not UTF-8
    in a complete line and a corrupt gzip stream raise InputError naming ``file:line``;
    an incomplete last line that is not UTF-8 (cut inside a character) has text None."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self.lineno = 0
        try:
            raw = path.open("rb")
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read {what} ({os_reason(exc)})") from None
        self.gzipped = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        self._file: IO[bytes] = gzip.GzipFile(fileobj=raw) if self.gzipped else raw
        self._raw = raw

    def next(self) -> tuple[int, str | None, bool] | None:
        """The next line, or None at the end of the file."""
        try:
            data = self._file.readline()
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"{self.path}:{self.lineno + 1}: gzip stream is corrupt or "
                             f"truncated ({exc})") from None
        if not data:
            return None
        self.lineno += 1
        complete = data.endswith(b"\n")
        try:
            text = decode_utf8(data, str(self.path), f"{self.what} line", self.lineno)
        except InputError:
            if complete:
                raise
            return self.lineno, None, False
        return self.lineno, text, complete

    def close(self) -> None:
        self._file.close()
        self._raw.close()


class TraceReader:
    """Stream a trace (plain or gzip-compressed): ``header`` now, steps one at a time as
    you iterate.

    ``strict=False`` skips malformed middle lines instead of raising, counting them in
    ``skipped`` (and warning once at the end). A torn last line (one without a newline
    that does not parse) is always skipped with a warning and sets ``torn``. Use as a
    context manager, or iterate once (closes at end).
    """

    def __init__(self, path: str | Path, strict: bool = True) -> None:
        self.path = Path(path)
        self.strict = strict
        self.skipped = 0
        self.torn = False
        self._lines = _Lines(self.path, "trace")
        try:
            first = self._lines.next()
            if first is None or not (first[1] or "").strip():
                raise InputError(f"{self.path}:1: empty trace (no header line)")
            data = parse_json(first[1], f"{self.path}:1: header")
            self.header = TraceHeader.from_dict(data, where=f"{self.path}:1")
        except InputError:
            self._lines.close()
            raise

    @property
    def gzipped(self) -> bool:
        return self._lines.gzipped

    def __enter__(self) -> TraceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._lines.close()

    def __iter__(self) -> Iterator[TraceStep]:
        try:
            while True:
                try:
                    item = self._lines.next()
                except InputError:  # bytes that are not UTF-8: one malformed line
                    if self.strict:
                        raise
                    self.skipped += 1
                    continue
                if item is None:
                    break
                lineno, line, complete = item
                if line is not None and not line.strip():
                    continue
                try:
                    if line is None:
                        raise InputError(f"{self.path}:{lineno}: cut inside a UTF-8 character")
                    yield parse_step(line, self.header, f"{self.path}:{lineno}")
                except InputError as exc:
                    if not complete:  # torn by a writer that died or is busy
                        self.torn = True
                        warnings.warn(f"{exc}; torn last line skipped", TraceWarning,
                                      stacklevel=2)
                    elif self.strict:
                        raise
                    else:
                        self.skipped += 1
        finally:
            self.close()
        if self.skipped:
            warnings.warn(f"{self.path}: skipped {self.skipped} malformed line(s)",
                          TraceWarning, stacklevel=2)


def read_header(path: str | Path) -> TraceHeader:
    """The header of a trace, reading only its first line."""
    with TraceReader(path) as reader:
        return reader.header


def read_steps(path: str | Path, strict: bool = True) -> Iterator[TraceStep]:
    """Iterate the steps of a trace (see ``TraceReader``)."""
    return iter(TraceReader(path, strict=strict))


class TraceWriter:
    """Append steps to a trace, safely while other processes append or read.

    A new (or empty) file gets ``header`` as line 1; an existing trace must have a header
    of the same model shape. Each step is validated with the reader's rules, then written
    as one ``write`` of a whole line under ``flock`` on an ``O_APPEND`` descriptor. Under
    the same lock, before each write, a fragment at the end of the file (a writer was
    killed mid-line, or its write failed part-way) is cut with a warning, or ended with a
    newline when it is a whole step, so it cannot swallow the next step. A write that
    fails part-way cuts its own fragment before raising.
    """

    def __init__(self, path: str | Path, header: TraceHeader) -> None:
        self.path = Path(path)
        self.header = header
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except (OSError, ValueError) as exc:
            raise InputError(f"{self.path}: cannot open trace for append ({os_reason(exc)})"
                             ) from None
        try:
            with _Flock(self._fd):
                if os.fstat(self._fd).st_size == 0:
                    self._write(json.dumps(header.to_dict(), separators=(",", ":")) + "\n")
                else:
                    self._check_existing()
        except BaseException:
            os.close(self._fd)
            raise

    def _write(self, text: str) -> None:
        data = text.encode()
        while data:
            data = data[os.write(self._fd, data):]

    def _check_existing(self) -> None:
        if os.pread(self._fd, 2, 0) == GZIP_MAGIC:
            raise InputError(f"{self.path}: is gzip-compressed; not appending (write to an "
                             "uncompressed file)")
        existing = read_header(self.path)
        if existing.shape() != self.header.shape():
            raise InputError(f"{self.path}: existing trace is for {existing.model} "
                             f"(shape differs from {self.header.model}); not appending")
        self._repair_tail()

    def _repair_tail(self) -> None:
        """Under the lock: make the file end with a newline. A fragment after the last
        one is cut (warned), or ended with a newline when it is a whole step; the
        search goes back chunk by chunk, so a fragment of any length is found."""
        size = os.fstat(self._fd).st_size
        if size == 0 or os.pread(self._fd, 1, size - 1) == b"\n":
            return
        end = size
        keep = 0
        while end > 0:
            start = max(0, end - _TAIL_CHUNK)
            cut = os.pread(self._fd, end - start, start).rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            end = start
        if keep == 0:
            raise InputError(f"{self.path}:1: the header line has no newline; not a trace")
        fragment = os.pread(self._fd, size - keep, keep)
        try:
            parse_step(decode_utf8(fragment, str(self.path), "trace line"), self.header,
                       str(self.path))
        except InputError:
            warnings.warn(f"{self.path}: cut a torn last line ({size - keep} bytes)",
                          TraceWarning, stacklevel=3)
            os.ftruncate(self._fd, keep)
        else:
            self._write("\n")

    def append(self, step: TraceStep) -> None:
        """Append one step; raises InputError (and writes nothing) when the reader would
        reject it, RampError (leaving the file as it was) when the write fails."""
        if step.hists.shape != (self.header.moe_layers, self.header.num_experts):
            raise InputError(f"step {step.step}: histograms of shape {step.hists.shape}, "
                             f"header says ({self.header.moe_layers}, "
                             f"{self.header.num_experts})")
        line = step.to_json() + "\n"
        parse_step(line, self.header, f"{self.path}: step {step.step}")
        with _Flock(self._fd):
            try:
                self._repair_tail()
            except OSError as exc:
                raise RampError(f"{self.path}: cannot cut the torn last line ({exc.strerror}); "
                                f"step {step.step} is not appended") from None
            size = os.fstat(self._fd).st_size
            try:
                self._write(line)
            except OSError as exc:
                # if this fails too, the next append (by any writer) cuts the fragment
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, size)
                raise RampError(f"{self.path}: cannot append step {step.step} "
                                f"({exc.strerror}); the step is not in the trace") from None

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Flock:
    """Exclusive advisory lock on a descriptor for the duration of a ``with`` block."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)


def write_trace(path: str | Path, header: TraceHeader, steps: Iterable[TraceStep]) -> Path:
    """Write a whole trace to a new file (replacing any), e.g. a generated one. The steps
    go to a temporary file renamed over ``path`` at the end, so a step that fails
    validation leaves an existing file as it was."""
    def write(tmp: Path) -> None:
        with TraceWriter(tmp, header) as writer:
            for step in steps:
                writer.append(step)

    return write_atomically(path, write, "trace")


# --- request-arrival streams ------------------------------------------------------------

ARRIVALS_FORMAT = "ramp-arrivals/1"


@dataclass(frozen=True)
class Arrival:
    """One request reaching the server: when, and how many prompt and output tokens."""

    time: float  # seconds since the stream started
    prompt: int
    output: int

    def to_json(self) -> str:
        return json.dumps({"time": round(self.time, 6), "prompt": self.prompt,
                           "output": self.output}, separators=(",", ":"))


MAX_REQUEST_TOKENS = 1 << 24  # prompt or output tokens of one request


def parse_arrival(data: Any, where: str) -> Arrival:
    """Validate one arrival record (a mapping with time, prompt, output)."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: an arrival must be a JSON object")
    for name in ("time", "prompt", "output"):
        if name not in data:
            raise InputError(f"{where}: missing field {name!r}")
    time, prompt, output = data["time"], data["prompt"], data["output"]
    if not _finite_at_least_0(time):
        raise InputError(f"{where}: field 'time' must be a finite number >= 0, got {time!r}")
    for name, value in (("prompt", prompt), ("output", output)):
        if (isinstance(value, bool) or not isinstance(value, int)
                or not 0 < value <= MAX_REQUEST_TOKENS):
            raise InputError(f"{where}: field {name!r} must be an int in "
                             f"1..{MAX_REQUEST_TOKENS}, got {value!r}")
    return Arrival(float(time), prompt, output)


def read_arrivals(path: str | Path) -> Iterator[Arrival]:
    """Stream an arrivals file (header line, then one arrival per line, times sorted;
    plain or gzip-compressed)."""
    lines = _Lines(Path(path), "arrivals")
    try:
        first = lines.next()
        header = parse_json(first[1], f"{path}:1: header") if first and first[1] else None
        if not isinstance(header, dict) or header.get("format") != ARRIVALS_FORMAT:
            raise InputError(f"{path}:1: field 'format' must be {ARRIVALS_FORMAT!r}")
        last = 0.0
        while (item := lines.next()) is not None:
            lineno, line, _ = item
            where = f"{path}:{lineno}"
            if line is None:
                raise InputError(f"{where}: arrivals line is not UTF-8 text")
            if not line.strip():
                continue
            arrival = parse_arrival(parse_json(line, where), where)
            if arrival.time < last:
                raise InputError(f"{where}: field 'time' goes backwards ({arrival.time} < "
                                 f"{last})")
            last = arrival.time
            yield arrival
    finally:
        lines.close()


def write_arrivals(path: str | Path, arrivals: Iterable[Arrival], source: str,
                   meta: dict[str, Any] | None = None) -> Path:
    """Write an arrivals file; ``source`` and ``meta`` record its provenance."""
    path = Path(path)
    header = {"format": ARRIVALS_FORMAT, "source": source, "meta": meta or {}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            f.write(json.dumps(header) + "\n")
            for arrival in arrivals:
                f.write(arrival.to_json() + "\n")
    except InputError:  # a step or arrival the reader would refuse
        raise
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot write arrivals ({os_reason(exc)})") from None
    return path
