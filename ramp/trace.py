"""Routing traces (``trace.jsonl``): the expert histograms a server saw, step by step.

Line 1 is a header (format version, model shape, source, recording engine, parallelism);
every further line is one forward step: its phase, token count and one expert histogram
per MoE layer, optionally the token-level top-k expert ids. traces/FORMAT.md is the spec.

Traces are written while a server runs and can grow to many GB, so:

- ``TraceReader`` streams line by line and never holds more than one step;
- ``TraceWriter`` appends whole lines with one ``write`` under an exclusive lock on an
  ``O_APPEND`` descriptor, so several writer processes and a concurrent reader never see
  interleaved lines;
- a torn last line (the server died mid-write, or is writing it now) is reported with a
  ``TraceWarning`` and skipped; a malformed line anywhere else raises ``InputError``
  naming ``file:line`` and the field, or with ``strict=False`` is skipped and counted.
"""

from __future__ import annotations

import fcntl
import json
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ramp.errors import InputError
from ramp.problem import DTYPE_BYTES, validate_histogram

TRACE_FORMAT = "ramp-trace/1"
PHASES = ("prefill", "decode", "mixed")
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
        if self.dtype not in DTYPE_BYTES:
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
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
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
    if time is not None and (isinstance(time, bool) or not isinstance(time, (int, float))
                             or not time >= 0):
        raise InputError(f"{where}: field 'time' must be a number >= 0, got {time!r}")
    step_ms = data.get("step_ms")
    if step_ms is not None and (isinstance(step_ms, bool) or
                                not isinstance(step_ms, (int, float)) or not step_ms > 0):
        raise InputError(f"{where}: field 'step_ms' must be a number > 0, got {step_ms!r}")
    hists = _parse_hists(data["layers"], header, tokens, where)
    ids = data.get("topk_ids")
    topk = None if ids is None else _parse_topk(ids, header, tokens, hists, where)
    return TraceStep(step, phase, tokens, hists, None if time is None else float(time), topk,
                     None if step_ms is None else float(step_ms))


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


class TraceReader:
    """Stream a trace: ``header`` now, steps one at a time as you iterate.

    ``strict=False`` skips malformed middle lines instead of raising, counting them in
    ``skipped`` (and warning once at the end). A torn last line is always skipped with a
    warning and sets ``torn``. Use as a context manager, or iterate once (closes at end).
    """

    def __init__(self, path: str | Path, strict: bool = True) -> None:
        self.path = Path(path)
        self.strict = strict
        self.skipped = 0
        self.torn = False
        try:
            self._file: TextIO = self.path.open("r", encoding="utf-8")
        except OSError as exc:
            raise InputError(f"{self.path}: cannot read trace ({exc.strerror})") from None
        first = self._file.readline()
        if not first.strip():
            self._file.close()
            raise InputError(f"{self.path}:1: empty trace (no header line)")
        try:
            data = json.loads(first)
        except json.JSONDecodeError as exc:
            self._file.close()
            raise InputError(f"{self.path}:1: header is not valid JSON ({exc.msg})") from None
        try:
            self.header = TraceHeader.from_dict(data, where=f"{self.path}:1")
        except InputError:
            self._file.close()
            raise

    def __enter__(self) -> TraceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def __iter__(self) -> Iterator[TraceStep]:
        lineno = 1
        pending = self._file.readline()
        try:
            while pending:
                line, pending = pending, self._file.readline()
                lineno += 1
                if not line.strip():
                    continue
                try:
                    yield parse_step(line, self.header, f"{self.path}:{lineno}")
                except InputError as exc:
                    if not pending:  # nothing after it: torn by a writer that died or is busy
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
    of the same model shape. Each step is one ``write`` of a whole line under ``flock``
    on an ``O_APPEND`` descriptor. A torn last line left by a writer that died is cut off
    (with a warning) before the first append, so it cannot swallow the next step.
    """

    def __init__(self, path: str | Path, header: TraceHeader) -> None:
        self.path = Path(path)
        self.header = header
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InputError(f"{self.path}: cannot open trace for append ({exc.strerror})"
                             ) from None
        with _Flock(self._fd):
            if os.fstat(self._fd).st_size == 0:
                self._write(json.dumps(header.to_dict(), separators=(",", ":")) + "\n")
            else:
                self._check_existing()

    def _write(self, text: str) -> None:
        data = text.encode()
        while data:
            data = data[os.write(self._fd, data):]

    def _check_existing(self) -> None:
        existing = read_header(self.path)
        if existing.shape() != self.header.shape():
            raise InputError(f"{self.path}: existing trace is for {existing.model} "
                             f"(shape differs from {self.header.model}); not appending")
        with self.path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - (1 << 20)))
            tail = f.read()
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        if cut < 0:
            raise InputError(f"{self.path}: last 1 MiB has no line break; not a trace")
        keep = size - len(tail) + cut + 1
        warnings.warn(f"{self.path}: cut a torn last line ({size - keep} bytes)", TraceWarning,
                      stacklevel=3)
        os.truncate(self.path, keep)

    def append(self, step: TraceStep) -> None:
        if step.hists.shape != (self.header.moe_layers, self.header.num_experts):
            raise InputError(f"step {step.step}: histograms of shape {step.hists.shape}, "
                             f"header says ({self.header.moe_layers}, "
                             f"{self.header.num_experts})")
        line = step.to_json() + "\n"
        with _Flock(self._fd):
            self._write(line)

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
    """Write a whole trace to a new file (replacing any), e.g. a generated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with TraceWriter(path, header) as writer:
        for step in steps:
            writer.append(step)
    return path


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


def parse_arrival(data: Any, where: str) -> Arrival:
    """Validate one arrival record (a mapping with time, prompt, output)."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: an arrival must be a JSON object")
    for name in ("time", "prompt", "output"):
        if name not in data:
            raise InputError(f"{where}: missing field {name!r}")
    time, prompt, output = data["time"], data["prompt"], data["output"]
    if isinstance(time, bool) or not isinstance(time, (int, float)) or not time >= 0:
        raise InputError(f"{where}: field 'time' must be a number >= 0, got {time!r}")
    for name, value in (("prompt", prompt), ("output", output)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InputError(f"{where}: field {name!r} must be an int > 0, got {value!r}")
    return Arrival(float(time), prompt, output)


def read_arrivals(path: str | Path) -> Iterator[Arrival]:
    """Stream an arrivals file (header line, then one arrival per line, times sorted)."""
    path = Path(path)
    try:
        f = path.open("r", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read arrivals ({exc.strerror})") from None
    with f:
        try:
            header = json.loads(f.readline() or "null")
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:1: header is not valid JSON ({exc.msg})") from None
        if not isinstance(header, dict) or header.get("format") != ARRIVALS_FORMAT:
            raise InputError(f"{path}:1: field 'format' must be {ARRIVALS_FORMAT!r}")
        last = 0.0
        for lineno, line in enumerate(f, start=2):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                arrival = parse_arrival(json.loads(line), where)
            except json.JSONDecodeError as exc:
                raise InputError(f"{where}: not valid JSON ({exc.msg})") from None
            if arrival.time < last:
                raise InputError(f"{where}: field 'time' goes backwards ({arrival.time} < "
                                 f"{last})")
            last = arrival.time
            yield arrival


def write_arrivals(path: str | Path, arrivals: Iterable[Arrival], source: str,
                   meta: dict[str, Any] | None = None) -> Path:
    """Write an arrivals file; ``source`` and ``meta`` record its provenance."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": ARRIVALS_FORMAT, "source": source, "meta": meta or {}}
    with path.open("w", encoding="utf-8") as f:
        f.write(json.dumps(header) + "\n")
        for arrival in arrivals:
            f.write(arrival.to_json() + "\n")
    return path
