"""Regret of a dispatcher against exhaustive measurements.

regret(call) = t(chosen) / t(best measured) - 1. The paper reports 0.93% mean regret for
its model; these are the figures `ramp evaluate` writes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ramp.dispatch import Dispatcher
from ramp.errors import InputError


@dataclass(frozen=True)
class RegretReport:
    """Summary of a dispatcher over measured calls."""

    policy: str
    calls: int
    mean_regret: float
    p95_regret: float
    max_regret: float
    top1_accuracy: float       # fraction of calls where the measured-best config was chosen
    speedup_geomean: float | None = None   # over the baseline dispatcher, if one was given
    baseline: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def geomean(x: np.ndarray) -> float | None:
    """Geometric mean of the finite entries (None when there are none): the mean of
    speedup ratios, which compose multiplicatively."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(np.exp(np.mean(np.log(x)))) if x.size else None


def chosen_times(times: np.ndarray, choices: np.ndarray) -> np.ndarray:
    """Measured time of each call's chosen configuration."""
    return times[np.arange(times.shape[0]), choices]


def evaluate(
    dispatcher: Dispatcher,
    hists: np.ndarray,
    times: np.ndarray,
    baseline: Dispatcher | None = None,
) -> RegretReport:
    """Regret of ``dispatcher`` on histograms [H, E] whose configs were all timed [H, C].

    Missing measurements (NaN) never count as best; a dispatcher that picks an unmeasured
    configuration is an error, since its regret is unknown.
    """
    hists = np.atleast_2d(hists)
    times = np.asarray(times, dtype=np.float64)
    if times.shape[0] != hists.shape[0]:
        raise InputError("evaluate: one row of measured times per histogram")
    best = np.nanmin(times, axis=1)
    choice = dispatcher.choose_batch(hists)
    t = chosen_times(times, choice)
    if not np.all(np.isfinite(t)):
        raise InputError(f"{dispatcher.name} chose a configuration that was not measured")
    regret = t / best - 1.0
    speedup = None
    if baseline is not None:
        tb = chosen_times(times, baseline.choose_batch(hists))
        speedup = float(np.exp(np.mean(np.log(tb / t))))
    return RegretReport(
        policy=dispatcher.name,
        calls=int(hists.shape[0]),
        mean_regret=float(regret.mean()),
        p95_regret=float(np.percentile(regret, 95)),
        max_regret=float(regret.max()),
        top1_accuracy=float(np.mean(regret <= 1e-12)),
        speedup_geomean=speedup,
        baseline=baseline.name if baseline is not None else None,
    )
