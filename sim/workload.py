"""Request workloads: a recorded arrival stream, or a seeded Poisson/gamma process."""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ramp.errors import InputError
from ramp.trace import MAX_REQUEST_TOKENS, Arrival, read_arrivals

LENGTH_DISTS = ("fixed", "lognormal", "uniform")
ARRIVAL_PROCESSES = ("poisson", "gamma")
MAX_REQUESTS = 10 ** 6  # of a synthetic workload: ~50x the shipped busy hour


@dataclass(frozen=True)
class LengthDist:
    """Token-count distribution: ``fixed`` (mean), ``lognormal`` (mean, cv) or ``uniform``
    on ``[low, high]``; samples are clipped to ``[1, max]``."""

    dist: str = "fixed"
    mean: float = 512.0
    cv: float = 1.0
    low: int = 1
    high: int = 1024
    max: int = 32768

    def __post_init__(self) -> None:
        if self.dist not in LENGTH_DISTS:
            raise InputError(f"length dist {self.dist!r} not in {LENGTH_DISTS}")
        # written so that NaN and inf fail
        if not (1 <= self.mean <= MAX_REQUEST_TOKENS and 0 <= self.cv < math.inf
                and 1 <= self.low <= self.high <= MAX_REQUEST_TOKENS
                and 1 <= self.max <= MAX_REQUEST_TOKENS):
            raise InputError(f"length dist {self}: need 1 <= mean <= {MAX_REQUEST_TOKENS}, "
                             f"finite cv >= 0, 1 <= low <= high <= {MAX_REQUEST_TOKENS}, "
                             f"1 <= max <= {MAX_REQUEST_TOKENS}")

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.dist == "fixed":
            x = np.full(n, self.mean)
        elif self.dist == "uniform":
            x = rng.integers(self.low, self.high + 1, size=n).astype(float)
        else:  # lognormal with the requested mean and coefficient of variation
            sigma2 = np.log1p(self.cv ** 2)
            x = rng.lognormal(np.log(self.mean) - sigma2 / 2, np.sqrt(sigma2), size=n)
        return np.clip(np.rint(x), 1, self.max).astype(np.int64)


@dataclass(frozen=True)
class SyntheticWorkload:
    """``requests`` arrivals at ``rate`` per second: Poisson, or gamma-distributed gaps
    with coefficient of variation ``cv`` (cv > 1 is burstier than Poisson)."""

    rate: float
    requests: int
    prompt: LengthDist = LengthDist("lognormal", 1024, 1.0)
    output: LengthDist = LengthDist("lognormal", 256, 1.0)
    process: str = "poisson"
    cv: float = 1.0

    def __post_init__(self) -> None:
        if not (0 < self.rate < math.inf and 0 < self.cv < math.inf):
            raise InputError(f"workload: rate and cv must be finite and > 0, got "
                             f"{self.rate}, {self.cv}")
        if not 1 <= self.requests <= MAX_REQUESTS:
            raise InputError(f"workload: requests must be in 1..{MAX_REQUESTS}, got "
                             f"{self.requests}")
        if self.process not in ARRIVAL_PROCESSES:
            raise InputError(f"workload: process {self.process!r} not in {ARRIVAL_PROCESSES}")

    def arrivals(self, seed: int) -> list[Arrival]:
        rng = np.random.default_rng(seed)
        n = self.requests
        if self.process == "poisson":
            gaps = rng.exponential(1.0 / self.rate, size=n)
        else:
            shape = 1.0 / self.cv ** 2
            gaps = rng.gamma(shape, 1.0 / (self.rate * shape), size=n)
        times = np.cumsum(gaps) - gaps[0]
        prompts, outputs = self.prompt.sample(n, rng), self.output.sample(n, rng)
        return [Arrival(float(t), int(p), int(o)) for t, p, o in zip(times, prompts, outputs)]


def embedded_path(name: str) -> Path | None:
    """Path of a trace or arrivals file shipped in ramp/data/traces, by file name or stem."""
    root = resources.files("ramp") / "data" / "traces"
    for candidate in (name, f"{name}.jsonl", f"{name}.arrivals.jsonl"):
        item = root / candidate
        if item.is_file():
            return Path(str(item))
    return None


def embedded_names() -> list[str]:
    root = resources.files("ramp") / "data" / "traces"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.name.endswith(".jsonl"))


def resolve_path(name: str | Path, what: str) -> Path:
    """A user path, or the name of a shipped file (``ramp-sim list`` shows them)."""
    if not isinstance(name, (str, Path)) or not str(name):
        raise InputError(f"{what} {name!r}: expected a file path or a shipped name")
    path = Path(name)
    if path.is_file():
        return path
    found = embedded_path(str(name))
    if found is None and path.is_dir():
        raise InputError(f"{what} {str(name)!r}: is a directory; give the {what} file in it")
    if found is None:
        raise InputError(f"{what} {str(name)!r}: no such file and no shipped {what} of that "
                         f"name; shipped: {', '.join(embedded_names()) or 'none'}")
    return found


DEFAULT_ARRIVALS = "azure-conv-2023.arrivals.jsonl"


def check_arrival_options(time_scale: Any, limit: Any) -> None:
    """``time_scale`` a finite number > 0, ``limit`` None or an int >= 1 (they may come
    from a YAML scenario, so their types are checked too)."""
    if (isinstance(time_scale, bool) or not isinstance(time_scale, (int, float))
            or not 0 < time_scale < math.inf):
        raise InputError(f"field 'time_scale' must be a finite number > 0, got "
                         f"{time_scale!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 1):
        raise InputError(f"field 'limit' must be an int >= 1, got {limit!r}")


def load_arrivals(source: str | Path, time_scale: float = 1.0, limit: int | None = None,
                  ) -> list[Arrival]:
    """Arrivals from a RaMP arrivals file, an Azure LLM trace CSV, or a shipped name.

    ``time_scale`` < 1 compresses time (a faster arrival rate), > 1 stretches it.
    """
    check_arrival_options(time_scale, limit)
    path = resolve_path(source, "arrivals")
    if path.suffix == ".csv":
        from ramp.traces.converters import read_azure_csv

        stream: Any = read_azure_csv(path)
    else:
        stream = read_arrivals(path)
    out = []
    for arrival in stream:
        if limit is not None and len(out) >= limit:
            break
        out.append(Arrival(arrival.time * time_scale, arrival.prompt, arrival.output))
    if not out:
        raise InputError(f"{path}: no arrivals")
    return out
