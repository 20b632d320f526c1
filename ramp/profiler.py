"""The profiler driver: time every configuration on sampled histograms, then fit.

Kernel families supply a ``Timer`` (GPU code lives in ``ramp.kernels``); this module
only decides what to measure, keeps the budget, checkpoints after every histogram so an
interrupted run resumes where it stopped, and turns measurements into a ``Profile``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ramp.bank import KernelBank
from ramp.costmodel import ModelError, WaveCostModel, family_features
from ramp.dispatch import StaticDispatcher
from ramp.errors import InputError
from ramp.expert_parallel import ExpertPlacement
from ramp.histograms import parse_histogram_spec
from ramp.plaindata import locate, read_json
from ramp.problem import MoEProblem
from ramp.profile import Profile

MEASUREMENTS_SCHEMA = "ramp-measurements/1"
# Powers of two. Adding their geometric midpoints (25 sizes) was measured on Mixtral:
# mixed held-out regret (w13 2.02% -> 2.31%, w2 2.98% -> 2.06%, both within timing noise)
# for 1.8x the profiling time (bench/results/raw/dense-grid, docs/perf/triton.md).
PROFILE_TOKENS = tuple(2**k for k in range(14))
# "realistic" (the generator fitted to real routing, ramp.realistic) is the default skew;
# it replaced "zipf:s=1.0" (shipped H100 profiles were measured with that plan).
PROFILE_ROUTINGS = ("uniform", "realistic", "zipf:s=1.5", "hot:hot_fraction=0.4")


class Timer(Protocol):
    """What a kernel family provides to be profiled."""

    family: str
    family_version: str
    bank: KernelBank  # with the occupancy the timer launches at

    def time_all(self, hist: np.ndarray) -> np.ndarray:
        """Microseconds of every configuration of ``bank`` on one histogram (NaN: failed)."""
        ...

    def device_info(self) -> dict[str, Any]:
        """Provenance: GPU name, SMs, driver, library versions."""
        ...


@dataclass(frozen=True)
class SamplePlan:
    """Which histograms to measure: every routing spec at every token count."""

    tokens: tuple[int, ...] = PROFILE_TOKENS
    routings: tuple[str, ...] = PROFILE_ROUTINGS
    seed: int = 0

    def histograms(self, problem: MoEProblem, ep: int = 1) -> tuple[np.ndarray, list[str]]:
        """[H, E] histograms and their labels (``"zipf:s=1.0,tokens=64,seed=3"``), in an
        order that covers the token range early, so a budget cut still fits every size.

        With ``ep`` > 1, ``problem`` is the whole layer's (all E experts) and each sample
        is what the busiest of ``ep`` ranks receives of it under the contiguous placement:
        ``E/ep`` counts, label suffix ``@ep4``. A rank gets its share of every token's
        picks, at small T fewer rows than top_k over a few experts; local profiles
        trained on whole tokens routed to one rank picked kernels that lost up to 31%
        to static on real routing there (docs/routing.md, eleventh session).
        """
        labels = []
        for rank, t in enumerate(_spread(self.tokens)):
            for j, routing in enumerate(self.routings):
                sep = "," if ":" in routing else ":"
                seed = self.seed * 1000 + rank * len(self.routings) + j
                labels.append(f"{routing}{sep}tokens={t},seed={seed}")
        hists = np.stack([parse_histogram_spec(s, problem.num_experts, problem.top_k)
                          for s in labels])
        if ep > 1:
            placement = ExpertPlacement.contiguous(problem.num_experts, ep)
            hists = placement.view(hists[:, None, :]).busiest()[:, 0, :]
            labels = [f"{label}@ep{ep}" for label in labels]
        return hists, labels


def _spread(values: Sequence[int]) -> list[int]:
    """Ends first, then midpoints, recursively: any prefix spans the whole range."""
    values = sorted(values)
    out: list[int] = []
    spans = [(0, len(values) - 1)]
    out.extend([values[0], values[-1]] if len(values) > 1 else values)
    while spans:
        lo, hi = spans.pop(0)
        if hi - lo < 2:
            continue
        mid = (lo + hi) // 2
        out.append(values[mid])
        spans += [(lo, mid), (mid, hi)]
    return out


@dataclass
class Measurements:
    """Exhaustive timings: every configuration of a bank on every histogram."""

    gpu: str
    problem: MoEProblem
    bank: KernelBank
    family: str
    family_version: str
    hists: np.ndarray            # [H, E]
    labels: list[str]
    times: np.ndarray            # [H, C] microseconds, NaN where a config failed
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens(self) -> np.ndarray:
        """Tokens per histogram, at least 1 (an EP rank's view can hold < top_k rows)."""
        return np.maximum(self.hists.sum(axis=1) // self.problem.top_k, 1)

    def is_uniform(self) -> np.ndarray:
        return np.array([lab.startswith("uniform") for lab in self.labels])

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": MEASUREMENTS_SCHEMA, "gpu": self.gpu, "problem": self.problem.to_dict(),
            "family": self.family, "family_version": self.family_version,
            "configs": self.bank.to_list(), "labels": self.labels,
            "hists": self.hists.tolist(),
            "times_us": [[None if not np.isfinite(v) else round(float(v), 3) for v in row]
                         for row in self.times],
            "provenance": self.provenance,
        }

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict()) + "\n")
        tmp.replace(path)  # atomic: a crash never leaves half a checkpoint

    @classmethod
    def load(cls, path: str | Path) -> Measurements:
        """Read a measurements file; every field is checked (one ``InputError`` naming the
        file, line and field), since a fit on malformed timings would be a bad profile."""
        path = Path(path)
        data = read_json(path, "measurements")
        if not isinstance(data, dict) or data.get("schema") != MEASUREMENTS_SCHEMA:
            raise InputError(locate(f"{path}: not a {MEASUREMENTS_SCHEMA} file", data, "schema"))
        try:
            problem = MoEProblem.from_dict(data["problem"], where=f"{path}: problem")
            bank = KernelBank.from_list(data["configs"], where=f"{path}: configs")
            rows = _rows(path, data, "times_us", len(bank), float, allow_none=True)
            times = np.array([[np.nan if v is None else v for v in row] for row in rows],
                             dtype=np.float64)
            hists = np.array(_rows(path, data, "hists", problem.num_experts, int,
                                   count=len(rows)), dtype=np.int64).reshape(
                len(rows), problem.num_experts)
            labels = data["labels"]
            if (not isinstance(labels, list) or len(labels) != len(rows)
                    or not all(isinstance(lab, str) for lab in labels)):
                raise InputError(locate(f"{path}: field 'labels' must be {len(rows)} "
                                        "strings, one per histogram", data, "labels"))
            names = {k: data[k] for k in ("gpu", "family", "family_version")}
            for key, value in names.items():
                if not isinstance(value, str) or not value:
                    raise InputError(locate(f"{path}: field {key!r} must be a name", data, key))
            return cls(names["gpu"], problem, bank, names["family"], names["family_version"],
                       hists, labels, times, data.get("provenance", {}))
        except KeyError as exc:
            raise InputError(locate(f"{path}: missing field {exc}", data)) from None


def _rows(path: Path, data: Any, key: str, width: int, kind: type, count: int | None = None,
          allow_none: bool = False) -> list[list[Any]]:
    """``data[key]``: a list (of ``count`` rows, if given) of ``width`` numbers each, finite
    and > 0 for ``float``, >= 0 whole numbers for ``int``; ``None`` (a failed
    configuration) where allowed."""
    rows = data[key]
    what = "times in microseconds (> 0) or null" if kind is float else "counts (>= 0)"
    if not isinstance(rows, list) or not rows or (count is not None and len(rows) != count):
        n = "a non-empty list" if count is None else f"{count} rows"
        raise InputError(locate(f"{path}: field {key!r} must be {n} of {width} {what}",
                                data, key))
    for i, row in enumerate(rows):
        ok = isinstance(row, list) and len(row) == width and all(
            (v is None and allow_none) or (
                isinstance(v, (int, float)) and not isinstance(v, bool)
                and (v > 0 and math.isfinite(v) if kind is float
                     else v >= 0 and float(v).is_integer()))
            for v in row)
        if not ok:
            raise InputError(locate(f"{path}: {key}[{i}] must be {width} {what}", rows, i))
    return rows


def timer_provenance(timer: Timer) -> dict[str, Any]:
    """What a timer knows beyond the protocol, for a measurement's provenance: the worst
    verification error and the dropped configurations (timers that verify), compile
    seconds per configuration (timers that time their compiles)."""
    out: dict[str, Any] = {}
    if hasattr(timer, "verify_errors"):
        out["max_verify_error"] = max(timer.verify_errors.values(), default=None)
    if hasattr(timer, "dropped"):
        out["dropped_configs"] = timer.dropped
    if hasattr(timer, "compile_seconds"):
        out["compile_seconds"] = timer.compile_seconds
    return out


def measure(
    timer: Timer,
    gpu: str,
    problem: MoEProblem,
    hists: np.ndarray,
    labels: list[str],
    *,
    budget_s: float | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
) -> Measurements:
    """Time every configuration on every histogram, within ``budget_s`` seconds.

    With a ``checkpoint`` path, measurements are saved after each histogram, and rows
    already in the file (same GPU, problem and bank) are not measured again.
    """
    from tqdm import tqdm

    done: dict[str, np.ndarray] = {}
    if checkpoint is not None and Path(checkpoint).exists():
        old = Measurements.load(checkpoint)
        if (old.gpu, old.problem, old.bank.configs) != (gpu, problem, timer.bank.configs):
            raise InputError(f"{checkpoint}: checkpoint is for another GPU, problem or bank; "
                             "move it away to start afresh")
        done = dict(zip(old.labels, old.times))
    provenance = dict(timer.device_info(), started=datetime.now(timezone.utc).isoformat())
    kept_h, kept_l, kept_t = [], [], []
    start = time.monotonic()
    bar = tqdm(total=len(labels), disable=not progress, desc=f"profile {problem.key}",
               unit="hist")
    for hist, label in zip(hists, labels):
        if budget_s is not None and time.monotonic() - start > budget_s:
            bar.write(f"budget of {budget_s:.0f} s reached after {len(kept_l)} histograms")
            break
        times = done[label] if label in done else timer.time_all(hist)
        kept_h.append(hist)
        kept_l.append(label)
        kept_t.append(times)
        bar.update(1)
        bar.set_postfix_str(f"best {np.nanmin(times):.1f} us") if np.any(
            np.isfinite(times)) else None
        if checkpoint is not None:
            _snapshot(timer, gpu, problem, kept_h, kept_l, kept_t, provenance, start).save(
                checkpoint)
    bar.close()
    return _snapshot(timer, gpu, problem, kept_h, kept_l, kept_t, provenance, start)


def _snapshot(timer, gpu, problem, hists, labels, times, provenance, start) -> Measurements:
    prov = dict(provenance, profiling_seconds=round(time.monotonic() - start, 1))
    shape = (len(labels), len(timer.bank))
    return Measurements(gpu, problem, timer.bank, timer.family, timer.family_version,
                        np.array(hists, dtype=np.int64).reshape(len(labels), -1), labels,
                        np.array(times, dtype=np.float64).reshape(shape), prov)


def fit_profile(meas: Measurements, num_sms: int,
                features: Sequence[str] | None = None) -> Profile:
    """Fit the wave cost model (``features``: default the family's,
    ``ramp.costmodel.family_features``), measure its error and tune the static
    (uniform-routing) table."""
    features = tuple(features or family_features(meas.family))
    usable = np.sum(np.isfinite(meas.times), axis=0) >= len(features)
    if not usable.any():
        raise InputError("no configuration has enough valid measurements to fit")
    keep = np.flatnonzero(usable)
    bank = meas.bank.subset(keep)
    model = WaveCostModel.fit(bank, meas.problem, num_sms, meas.hists, meas.times[:, keep],
                              features)
    error = ModelError.measure(bank, meas.problem, num_sms, meas.hists, meas.times[:, keep],
                               features)
    uniform = meas.is_uniform()
    if not uniform.any():
        raise InputError("static dispatch is tuned on uniform routing: measure some")
    tokens = meas.tokens
    by_tokens = {int(t): meas.times[uniform & (tokens == t)][:, keep]
                 for t in np.unique(tokens[uniform])}
    static = StaticDispatcher.tune(by_tokens, meas.problem.top_k)
    provenance = dict(meas.provenance, fitted=datetime.now(timezone.utc).isoformat(),
                      samples=len(meas.labels), dropped_configs=int((~usable).sum()))
    return Profile(meas.gpu, meas.problem, meas.family, meas.family_version, model,
                   static.table, provenance, error)
