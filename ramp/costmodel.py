"""The wave cost model: at most four non-negative parameters per configuration.

For configuration ``c`` and histogram ``h`` the predicted time (microseconds) is

    t_c(h) = sum_f  p[c, f] * feature_f(c, h)

over at most four grid-geometry features (the table ``ramp.geometry.FEATURES``, which
the host dispatcher's folding and the sync-free kernel's device model derive from); the
default set is

    launch          1                      fixed cost of a call
    waves           ceil(tiles / slots)    critical-path waves: quantised, so tails cost
    active_experts  #{e : h[e] > 0}        distinct expert weights streamed from HBM
    tile_waves      tiles / slots          average work per CTA slot (throughput)

Parameters are fitted per configuration with non-negative least squares on relative
error, so each keeps a physical meaning (microseconds per launch, per wave, per expert,
per wave of tile work) and a fitted model never predicts a negative time. This follows
the Stream-K CTA-level model (Osama et al., 2023), over wave features instead of
fix-up peers.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ramp.bank import KernelBank
from ramp.errors import InputError
from ramp.geometry import FEATURE_NAMES, GeometryPlan
from ramp.plaindata import locate, locate_error
from ramp.problem import MoEProblem

if TYPE_CHECKING:
    from ramp.hardware import GPUSpec

DEFAULT_FEATURES = ("launch", "waves", "active_experts", "tile_waves")
# Feature sets chosen per kernel family by leave-one-out regret on the training calls
# (bench/feature_search.py; docs/perf/cute.md, docs/perf/triton.md): the tile work of
# the CuTe family (swap-AB thin tiles, epilogues that store only valid rows) and of the
# two-class Triton family is better described by the routed rows' waves than by their
# padded tiles. For triton-tiles on the H200 (DeepSeek-V2-Lite w13 and w2) this set's
# LOO regret is 1.03% against 3.00% for padded_rows (means over the two GEMMs), whose
# fit predicted a big-tile launch 3x too fast on the EP views' few active experts.
FAMILY_FEATURES = {"cute": ("launch", "waves", "active_experts", "row_waves"),
                   "triton-tiles": ("launch", "waves", "active_experts", "row_waves")}
MAX_FEATURES = 4
ANALYTIC_LAUNCH_US = 4.0  # launch + prologue of a graph-replayed kernel, measured order
MAX_SMS = 4096  # bound on num_sms read from a file (an H100 has 132)


def family_features(family: str) -> tuple[str, ...]:
    """The feature set a family's profiles are fitted with (DEFAULT_FEATURES unless the
    family has its own in FAMILY_FEATURES)."""
    return FAMILY_FEATURES.get(family, DEFAULT_FEATURES)


def loo_predictions(feats: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Leave-one-histogram-out predictions ``[H, C]`` of the per-configuration NNLS fit
    (features ``[H, C, F]``, times ``[H, C]`` with NaN where unmeasured): each call
    predicted by a fit to the other calls. NaN where a configuration has too few samples
    to hold one out or the call was not measured."""
    from scipy.optimize import nnls

    out = np.full(times.shape, np.nan)
    for c in range(times.shape[1]):
        ok = np.flatnonzero(np.isfinite(times[:, c]) & (times[:, c] > 0))
        if ok.size <= feats.shape[2]:
            continue
        a = feats[ok, c, :] / times[ok, c][:, None]
        for j, i in enumerate(ok):
            keep = np.arange(ok.size) != j
            p, _ = nnls(a[keep], np.ones(keep.sum()))
            out[i, c] = float(feats[i, c] @ p)
    return out


@dataclass(frozen=True)
class FitStats:
    """Quality of one configuration's fit on its own samples."""

    samples: int
    r2: float
    mape: float  # mean |pred - time| / time

    def to_dict(self) -> dict[str, float]:
        return {"samples": self.samples, "r2": self.r2, "mape": self.mape}


@dataclass
class WaveCostModel:
    """Per-configuration linear model over grid features; plain data, fit/predict API."""

    bank: KernelBank
    problem: MoEProblem
    num_sms: int
    params: np.ndarray                      # [C, F] microseconds per unit of feature
    features: tuple[str, ...] = DEFAULT_FEATURES
    fit_stats: list[FitStats | None] = field(default_factory=list)
    _plan: GeometryPlan = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # 0 SMs predicts inf, a negative count negative times: both only from a bad file
        if (isinstance(self.num_sms, bool) or not isinstance(self.num_sms, (int, np.integer))
                or not 1 <= self.num_sms <= MAX_SMS):
            raise InputError(f"field 'num_sms' must be an int in 1..{MAX_SMS}, "
                             f"got {self.num_sms!r}")
        if not 1 <= len(self.features) <= len(FEATURE_NAMES) or len(set(self.features)) != len(
                self.features):
            raise InputError(f"a wave cost model has 1..{len(FEATURE_NAMES)} distinct "
                             f"features, got {list(self.features)}")
        unknown = [f for f in self.features if f not in FEATURE_NAMES]
        if unknown:
            raise InputError(f"unknown feature(s) {unknown}; known: {FEATURE_NAMES}")
        self.params = np.asarray(self.params, dtype=np.float64)
        if self.params.shape != (len(self.bank), len(self.features)):
            raise InputError(f"params shape {self.params.shape} != "
                             f"({len(self.bank)}, {len(self.features)})")
        if np.any(self.params < 0) or not np.all(np.isfinite(self.params)):
            raise InputError("cost-model parameters must be finite and non-negative")
        # Several families' models side by side may use different features (concat), but
        # no configuration ever has more than MAX_FEATURES parameters.
        if np.any(np.count_nonzero(self.params, axis=1) > MAX_FEATURES):
            raise InputError(f"a configuration has more than {MAX_FEATURES} non-zero "
                             "cost-model parameters")
        self._plan = GeometryPlan(self.bank, self.problem, self.num_sms)

    @property
    def configs(self):
        return self.bank.configs

    @property
    def plan(self) -> GeometryPlan:
        return self._plan

    def predict(self, hists: np.ndarray) -> np.ndarray:
        """Predicted microseconds: [H, C] for histograms [H, E]; [C] for one histogram.
        A configuration that cannot run on a histogram (see KernelBank.applies) is inf."""
        arr = np.asarray(hists)
        geo = self._plan.geometry(arr)
        times = np.einsum("hcf,cf->hc", geo.features(self.features), self.params)
        runnable = self.bank.runnable(np.atleast_2d(arr))
        if runnable is not None:
            times = np.where(runnable, times, np.inf)
        return times[0] if arr.ndim == 1 else times

    @classmethod
    def fit(
        cls,
        bank: KernelBank,
        problem: MoEProblem,
        num_sms: int,
        hists: np.ndarray,
        times: np.ndarray,
        features: Sequence[str] = DEFAULT_FEATURES,
    ) -> WaveCostModel:
        """Fit every configuration by NNLS on relative error.

        ``hists`` [H, E]; ``times`` [H, C] microseconds with NaN where a configuration was
        not measured. A configuration with fewer samples than features cannot be fitted
        and is an error: drop it from the bank first.
        """
        from scipy.optimize import nnls

        features = tuple(features)
        if len(features) > MAX_FEATURES:
            raise InputError(f"fit at most {MAX_FEATURES} features, got {list(features)}")
        hists = np.atleast_2d(np.asarray(hists, dtype=np.int64))
        times = np.asarray(times, dtype=np.float64)
        if times.shape != (hists.shape[0], len(bank)):
            raise InputError(f"times shape {times.shape} != (histograms {hists.shape[0]}, "
                             f"configs {len(bank)})")
        plan = GeometryPlan(bank, problem, num_sms)
        feats = plan.geometry(hists).features(features)  # [H, C, F]
        params = np.zeros((len(bank), len(features)))
        stats: list[FitStats | None] = []
        for c in range(len(bank)):
            ok = np.isfinite(times[:, c]) & (times[:, c] > 0)
            if ok.sum() < len(features):
                raise InputError(f"config {bank.configs[c].name}: {int(ok.sum())} valid "
                                 f"samples, need >= {len(features)} to fit")
            x, y = feats[ok, c, :], times[ok, c]
            params[c], _ = nnls(x / y[:, None], np.ones_like(y))
            stats.append(_fit_stats(x @ params[c], y))
        return cls(bank, problem, num_sms, params, features, stats)

    @classmethod
    def analytic(cls, bank: KernelBank, problem: MoEProblem, gpu: GPUSpec) -> WaveCostModel:
        """A model from hardware constants alone, for a GPU nobody has profiled.

        launch = a typical launch cost; each wave costs one tile's FLOPs at the per-slot
        share of peak tensor throughput; each active expert costs its weight bytes at HBM
        bandwidth. Coarse (no measured efficiency), but it orders configurations by the
        same geometry the fitted model uses, which is what a what-if study needs.
        """
        peak = gpu.peak_bf16_flops if problem.dtype_bytes >= 2 else gpu.peak_fp8_flops
        if peak <= 0 or gpu.hbm_bandwidth <= 0:
            raise InputError(f"GPU {gpu.name} lacks peak FLOP/s or bandwidth constants")
        occ = bank.occupancy_array()
        params = np.zeros((len(bank), len(DEFAULT_FEATURES)))
        expert_us = problem.expert_weight_bytes / gpu.hbm_bandwidth * 1e6
        for c, cfg in enumerate(bank.configs):
            tile_flops = 2.0 * cfg.block_m * cfg.block_n * problem.k / cfg.split_k
            slot_flops = peak / (gpu.sms * occ[c])
            params[c] = (ANALYTIC_LAUNCH_US, tile_flops / slot_flops * 1e6, expert_us, 0.0)
        return cls(bank, problem, gpu.sms, params, DEFAULT_FEATURES, [None] * len(bank))

    @classmethod
    def concat(cls, models: Sequence[WaveCostModel]) -> WaveCostModel:
        """One model over the union of several banks (e.g. several kernel families). The
        models may use different features: the result has their union, each
        configuration keeping its own (zero for the others)."""
        first = models[0]
        for m in models[1:]:
            if (m.problem, m.num_sms) != (first.problem, first.num_sms):
                raise InputError("can only concatenate models of one problem and GPU")
        features = tuple(dict.fromkeys(f for m in models for f in m.features))
        params = np.zeros((sum(len(m.bank) for m in models), len(features)))
        row = 0
        for m in models:
            params[row:row + len(m.bank), [features.index(f) for f in m.features]] = m.params
            row += len(m.bank)
        bank = models[0].bank
        for m in models[1:]:
            bank = bank + m.bank
        return cls(bank, first.problem, first.num_sms, params, features,
                   [s for m in models for s in (m.fit_stats or [None] * len(m.bank))])

    def to_dict(self) -> dict[str, Any]:
        stats = self.fit_stats or [None] * len(self.bank)
        configs = []
        for item, p, s in zip(self.bank.to_list(), self.params, stats):
            item["params"] = [float(v) for v in p]
            item["fit"] = s.to_dict() if s is not None else None
            configs.append(item)
        return {"num_sms": self.num_sms, "features": list(self.features), "configs": configs}

    @classmethod
    def from_dict(cls, data: dict[str, Any], problem: MoEProblem,
                  where: str = "model") -> WaveCostModel:
        try:
            items = [copy.copy(c) for c in data["configs"]]  # a copy keeps where it was read
            params = [c.pop("params") for c in items]
            fits = [c.pop("fit", None) for c in items]
        except KeyError as exc:
            raise InputError(locate(f"{where}: missing field {exc}", data)) from None
        except AttributeError:
            raise InputError(locate(f"{where}: must be an object with 'configs', 'num_sms' "
                                    "and 'features'", data)) from None
        except (TypeError, ValueError) as exc:
            raise InputError(locate(f"{where}: malformed ({exc})", data)) from None
        bank = KernelBank.from_list(items, where=f"{where}.configs")  # its errors name where
        try:
            stats = [FitStats(int(f["samples"]), float(f["r2"]), float(f["mape"]))
                     if f else None for f in fits]
            return cls(bank, problem, data["num_sms"], np.array(params, dtype=float),
                       tuple(data["features"]), stats)
        except KeyError as exc:
            raise InputError(locate(f"{where}: missing field {exc}", data)) from None
        except (TypeError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise InputError(locate_error(where, exc, data)) from None
            raise InputError(locate(f"{where}: malformed ({exc})", data)) from None


ERROR_MIN_CALLS = 3  # held-out calls behind each bucket's error, at least


@dataclass(frozen=True)
class ModelError:
    """How far the model's predictions are from measured times where a dispatch decision
    uses them, per batch-size bucket: ``error[i]`` is the mean relative error
    ``|pred / time - 1|`` of the configuration the model picks (its argmin) on calls with
    ``tokens[i]`` tokens (or, where fewer, the ``ERROR_MIN_CALLS`` calls nearest in
    log2 T), never below those calls' error over every configuration, each call
    predicted by a fit that did not see it (leave-one-histogram-out).
    Out-of-sample on purpose: in-sample residuals of four parameters fitted to ~50 calls
    understate the error a dispatch decision faces. At the pick on purpose: the argmin of
    imperfect predictions is the configuration whose prediction erred lowest (the
    winner's curse), so the error over every configuration understates it (on real
    DeepSeek-V2-Lite routing that mean let ``triton-tiles`` picks 12-16% optimistic past
    the guard; docs/routing.md).

    A guarded dispatcher (``ramp.dispatch.GuardedDispatcher``) leaves the static table
    only for a predicted gain larger than this error allows. A profile fitted before this
    statistic carries ``loo_mean_relative_error`` (over every configuration), read alike.
    """

    tokens: tuple[int, ...]
    error: tuple[float, ...]
    statistic: str = "loo_pick_relative_error"

    def __post_init__(self) -> None:
        if not self.tokens or len(self.tokens) != len(self.error):
            raise InputError("model error: one error per token bucket, at least one bucket")
        if any(t <= 0 for t in self.tokens) or list(self.tokens) != sorted(set(self.tokens)):
            raise InputError("model error: token buckets must be positive and increasing")
        if not all(0 <= e < 1 for e in self.error):
            raise InputError("model error: errors must lie in [0, 1)")

    def at(self, tokens: np.ndarray | int) -> np.ndarray:
        """Error of the bucket nearest to each T on a log scale."""
        t = np.log2(np.maximum(np.asarray(tokens, dtype=np.float64), 1.0))
        keys = np.log2(np.asarray(self.tokens, dtype=np.float64))
        return np.asarray(self.error)[np.abs(t.reshape(-1, 1) - keys).argmin(axis=1)].reshape(
            np.shape(tokens))

    @classmethod
    def uniform(cls, error: float) -> ModelError:
        """One error for every batch size (e.g. a default for profiles without one)."""
        return cls((1,), (float(error),), "assumed")

    @classmethod
    def measure(cls, bank: KernelBank, problem: MoEProblem, num_sms: int, hists: np.ndarray,
                times: np.ndarray, features: Sequence[str] = DEFAULT_FEATURES) -> ModelError:
        """Leave-one-histogram-out error of the NNLS fit at its pick, per token count of
        ``hists``: the mean over the bucket's calls, widened to the ``ERROR_MIN_CALLS``
        calls nearest in log2(T) where it has fewer (an EP rank's local T differs on
        every call, so a bucket often holds one), and at least the same calls' mean
        error over every configuration (a lucky pick must not leave no margin). The
        pick is among the configurations that can be held out on that call (more
        samples than features); the dispatcher's also counts those with exactly as
        many, which the shipped profiles do not have."""
        hists = np.atleast_2d(np.asarray(hists, dtype=np.int64))
        times = np.asarray(times, dtype=np.float64)
        feats = GeometryPlan(bank, problem, num_sms).geometry(hists).features(tuple(features))
        pred = loo_predictions(feats, times)
        every = np.abs(pred / times - 1.0)  # NaN: not held out
        pick = np.where(np.isfinite(pred), pred, np.inf).argmin(axis=1)
        at_pick = every[np.arange(len(pred)), pick]
        # an EP rank's local view can hold fewer rows than top_k: bucket 1, as ``at`` reads
        tokens = np.maximum(hists.sum(axis=1) // problem.top_k, 1)
        held = np.isfinite(at_pick)
        if not held.any():
            raise InputError("model error: no configuration has enough samples to hold one out")
        log_t, every, at_pick = np.log2(tokens[held]), every[held], at_pick[held]
        buckets = np.unique(tokens[held])
        error = []
        for t in buckets:
            dist = np.abs(log_t - np.log2(t))
            near = dist <= np.sort(dist)[min(ERROR_MIN_CALLS, dist.size) - 1]
            floor = np.nanmean(every[near])
            error.append(min(max(float(at_pick[near].mean()), float(floor)), 0.99))
        return cls(tuple(int(t) for t in buckets), tuple(error))

    def to_dict(self) -> dict[str, Any]:
        return {"statistic": self.statistic, "tokens": list(self.tokens),
                "error": [round(e, 5) for e in self.error]}

    @classmethod
    def from_dict(cls, data: Any, where: str = "model_error") -> ModelError:
        if not isinstance(data, dict):
            raise InputError(f"{where}: must be an object")
        try:
            return cls(tuple(int(t) for t in data["tokens"]),
                       tuple(float(e) for e in data["error"]),
                       str(data.get("statistic", "loo_mean_relative_error")))
        except KeyError as exc:
            raise InputError(locate(f"{where}: missing field {exc}", data)) from None
        except (TypeError, ValueError) as exc:
            raise InputError(locate_error(where, exc, data)) from None


def _fit_stats(pred: np.ndarray, y: np.ndarray) -> FitStats:
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    ss_res = float(np.sum((y - pred) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return FitStats(int(y.size), r2, float(np.mean(np.abs(pred - y) / y)))
