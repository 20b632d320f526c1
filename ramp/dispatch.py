"""Dispatchers: which configuration of the bank runs this call.

All share one interface (``choose`` for one call on the hot path, ``choose_batch`` for
evaluation and simulation) so that evaluation, the simulator and the engine adapters
can swap policies:

- ``StaticDispatcher``: one configuration per batch-size bucket, tuned on uniform
  routing. This is what vLLM and SGLang do with their JSON tables (nearest key wins).
- ``RampDispatcher``: argmin of the wave cost model on the live histogram.
- ``GuardedDispatcher``: the static choice, unless the model predicts a gain over it
  larger than the model's measured error allows (RaMP's default policy).
- ``CrossFamilyDispatcher``: the guarded choice over several kernel families, another
  family taking over only beyond both families' errors.
- ``OracleDispatcher``: argmin of measured times (exhaustive search); the regret floor.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from ramp.costmodel import ModelError, WaveCostModel
from ramp.errors import InputError
from ramp.geometry import BASES

if TYPE_CHECKING:
    from ramp.expert_parallel import EPView


class Dispatcher(ABC):
    """Chooses a configuration index of a bank for an expert histogram."""

    name: str = "dispatcher"

    @abstractmethod
    def choose(self, hist: np.ndarray) -> int:
        """Index of the configuration to run for one histogram [E]."""

    def choose_batch(self, hists: np.ndarray) -> np.ndarray:
        """Indices for histograms [H, E]; subclasses vectorise this."""
        return np.array([self.choose(h) for h in np.atleast_2d(hists)], dtype=np.int64)

    def choose_predicted(self, hists: np.ndarray, model: WaveCostModel,
                         pred: np.ndarray) -> np.ndarray:
        """``choose_batch(hists)`` for a caller that already has ``model``'s predictions
        ``pred`` [H, C] of them (the simulator prices every policy from one prediction):
        a dispatcher that reads that model uses them instead of predicting again."""
        return self.choose_batch(hists)

    def choose_view(self, view: EPView) -> np.ndarray:
        """Each rank's choice under expert parallelism, ``[..., ep]``: the rank's local
        histogram (``E/ep`` experts) and its local ``T*k`` decide, as on that GPU. The
        dispatcher must belong to the local problem (a profile of ``E/ep`` experts)."""
        lead = view.hists.shape[:-1]
        return self.choose_batch(view.hists.reshape(-1, view.hists.shape[-1])).reshape(lead)


class RampDispatcher(Dispatcher):
    """Argmin of the cost model on the runtime histogram, with a small signature cache.

    The single-call path avoids building geometry objects: it touches the histogram once
    per distinct block_m of the bank and then works on length-C vectors, so its host cost
    stays in the tens of microseconds at E=256, C>=200 (see docs/perf/dispatcher.md).
    Decode steps repeat histograms often (same experts, same counts), hence the cache.
    """

    name = "ramp-unguarded"

    def __init__(self, model: WaveCostModel, cache_size: int = 4096) -> None:
        self.model = model
        plan = model.plan
        self._bm_m1 = (plan.distinct_bm - 1)[:, None]
        self._bm = plan.distinct_bm[:, None]
        # ceil(h / bm) as a shift when every block_m is a power of two (integer division
        # is the slowest numpy operation on this path).
        pow2 = all(int(b) & (int(b) - 1) == 0 for b in plan.distinct_bm)
        self._bm_shift = np.log2(plan.distinct_bm).astype(np.int64)[:, None] if pow2 else None
        self._plan = plan
        self._tiling_index = plan.tiling_index
        self._tpr = plan.tiles_per_row_tile.astype(np.float64)
        self._slots = plan.slots.astype(np.float64)
        # Fold every linear feature (ramp.geometry.FEATURES) into one coefficient vector
        # per basis, so one call is about a dozen numpy operations on length-C vectors.
        coef, self._other = plan.fold(model.features, model.params)
        (self._intercept, self._per_active, self._per_tile, self._per_wave, self._per_row,
         self._per_padded) = (coef[:, BASES.index(b)] for b in (
             "one", "active_experts", "tiles", "waves", "rows", "padded"))
        self._windows = np.array(model.bank.applies).T if model.bank.applies else None
        self._cache: OrderedDict[bytes, int] = OrderedDict()
        self._cache_size = cache_size

    def predict_one(self, hist: np.ndarray) -> np.ndarray:
        """Predicted microseconds of every configuration for one histogram [E] (int64)."""
        bumped = hist + self._bm_m1
        ceils = bumped >> self._bm_shift if self._bm_shift is not None else bumped // self._bm
        row_tiles, rows_computed = self._plan.class_tiles(hist[None, :], ceils[None])
        tiles = row_tiles[0, self._tiling_index] * self._tpr
        t = self._intercept + self._per_active * float(np.count_nonzero(hist))
        t += self._per_tile * tiles
        t += self._per_wave * np.ceil(tiles / self._slots)  # exact: integers in float64
        t += self._per_row * float(hist.sum())
        t += self._per_padded * rows_computed[0, self._tiling_index]
        for name, coef in self._other:  # rarer features take the general path
            t += coef * self.model.plan.geometry(hist[None, :]).feature(name)[0]
        if self._windows is not None:
            mean_rows = hist.sum() / hist.size
            t[(mean_rows <= self._windows[0]) | (mean_rows > self._windows[1])] = np.inf
        return t

    def choose(self, hist: np.ndarray) -> int:
        hist = np.asarray(hist, dtype=np.int64)
        key = hist.tobytes()
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        choice = int(np.argmin(self.predict_one(hist)))
        self._cache[key] = choice
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return choice

    def choose_batch(self, hists: np.ndarray) -> np.ndarray:
        return np.argmin(self.model.predict(np.atleast_2d(hists)), axis=1)

    def choose_predicted(self, hists: np.ndarray, model: WaveCostModel,
                         pred: np.ndarray) -> np.ndarray:
        if model is not self.model:
            return self.choose_batch(hists)
        return np.argmin(pred, axis=1)


class GuardedDispatcher(Dispatcher):
    """RaMP that leaves the static table only when the model is sure enough.

    With ``e`` the model's relative error at this batch size (``ModelError``, measured at
    fit time), the argmin ``r`` replaces the static choice ``s`` only if even a pessimistic
    reading of both predictions keeps ``r`` ahead: ``pred_s * (1 - e) > pred_r * (1 + e)``,
    i.e. a predicted gain ``pred_s / pred_r - 1`` above ``2e / (1 - e)``. Where the model
    cannot tell configurations apart (real routing at small T, schedules the features do
    not see) this keeps RaMP at the static table instead of trading noise for regret.
    """

    name = "ramp"

    def __init__(self, model: WaveCostModel, static: StaticDispatcher,
                 error: ModelError) -> None:
        self.ramp = RampDispatcher(model)
        self.static = static
        self.error = error

    def margin(self, tokens: np.ndarray | int) -> np.ndarray:
        """The smallest predicted gain (``pred_s / pred_r - 1``) that moves off static."""
        e = self.error.at(tokens)
        return 2.0 * e / (1.0 - e)

    def _pick(self, pred: np.ndarray, tokens: np.ndarray, static: np.ndarray) -> np.ndarray:
        rows = np.arange(pred.shape[0])
        best = np.argmin(pred, axis=1)
        e = self.error.at(tokens)
        deviate = pred[rows, static] * (1.0 - e) > pred[rows, best] * (1.0 + e)
        return np.where(deviate, best, static)

    def choose(self, hist: np.ndarray) -> int:
        hist = np.asarray(hist, dtype=np.int64)
        tokens = int(hist.sum()) // self.static.top_k
        pred = self.ramp.predict_one(hist)[None, :]
        return int(self._pick(pred, np.array([tokens]),
                              np.array([self.static.choose_tokens(tokens)]))[0])

    def choose_batch(self, hists: np.ndarray) -> np.ndarray:
        hists = np.atleast_2d(hists)
        return self.choose_predicted(hists, self.ramp.model, self.ramp.model.predict(hists))

    def choose_predicted(self, hists: np.ndarray, model: WaveCostModel,
                         pred: np.ndarray) -> np.ndarray:
        if model is not self.ramp.model:
            return self.choose_batch(hists)
        tokens = np.atleast_2d(hists).sum(axis=1) // self.static.top_k
        return self._pick(pred, tokens, self.static.choose_tokens(tokens))


class CrossFamilyDispatcher(GuardedDispatcher):
    """RaMP choosing across kernel families, one family's model never trusted against
    another's without both errors.

    The combined bank holds the primary family's configurations first, then each other
    family's (``sizes``: configurations per family, ``errors``: each family's measured
    ``ModelError``). Per call the primary family's guarded choice ``p`` is made as in
    ``GuardedDispatcher``; another family's best configuration ``o`` replaces it only if
    ``pred_p * (1 - e_p) > pred_o * (1 + e_o)`` (of several such families, the one with
    the lowest prediction, whatever their order). Models fitted apart can be biased
    against each other where neither was trained (the EP views' few active experts): a
    plain argmin over the combined predictions then trades one family's optimism for
    regret, which this rule leaves at the primary family's choice.
    """

    def __init__(self, model: WaveCostModel, static: StaticDispatcher,
                 errors: list[ModelError], sizes: list[int]) -> None:
        if len(errors) != len(sizes) or sum(sizes) != len(model.bank):
            raise InputError(f"CrossFamilyDispatcher: {len(errors)} errors and family "
                             f"sizes {sizes} for a bank of {len(model.bank)}")
        super().__init__(model, static, errors[0])
        self.errors, self.sizes = errors, sizes

    def _pick(self, pred: np.ndarray, tokens: np.ndarray, static: np.ndarray) -> np.ndarray:
        rows = np.arange(pred.shape[0])
        head = self.sizes[0]
        pick = super()._pick(pred[:, :head], tokens, static)
        bar = pred[rows, pick] * (1.0 - self.errors[0].at(tokens))
        # every other family's best against the primary's bar; the fastest that clears it
        best_us = np.full(pred.shape[0], np.inf)
        start = head
        for size, error in zip(self.sizes[1:], self.errors[1:]):
            best = start + np.argmin(pred[:, start:start + size], axis=1)
            clears = (pred[rows, best] * (1.0 + error.at(tokens)) < bar) & (
                pred[rows, best] < best_us)
            pick = np.where(clears, best, pick)
            best_us = np.where(clears, pred[rows, best], best_us)
            start += size
        return pick


class StaticDispatcher(Dispatcher):
    """Batch-size-only choice: ``table[nearest bucket to T] -> config index``.

    ``T`` is recovered from the histogram as ``sum(h) / top_k``; the nearest-key rule is
    the one vLLM applies to its tuned JSON tables.
    """

    name = "static"

    def __init__(self, table: Mapping[int, int], top_k: int, num_configs: int) -> None:
        if not table:
            raise InputError("StaticDispatcher needs a non-empty {tokens: config} table")
        bad = [v for v in table.values() if not 0 <= int(v) < num_configs]
        if bad:
            raise InputError(f"static table names config index {bad[0]} outside the bank "
                             f"of {num_configs}")
        self.table = {int(k): int(v) for k, v in table.items()}
        self._keys = np.array(sorted(self.table), dtype=np.int64)
        self._values = np.array([self.table[k] for k in self._keys], dtype=np.int64)
        self.top_k = top_k

    def choose_tokens(self, tokens: np.ndarray | int) -> np.ndarray | int:
        t = np.asarray(tokens)
        idx = np.abs(self._keys[None, :] - t.reshape(-1, 1)).argmin(axis=1)
        out = self._values[idx]
        return int(out[0]) if t.ndim == 0 else out

    def choose(self, hist: np.ndarray) -> int:
        return self.choose_tokens(int(np.sum(hist)) // self.top_k)

    def choose_batch(self, hists: np.ndarray) -> np.ndarray:
        return self.choose_tokens(np.atleast_2d(hists).sum(axis=1) // self.top_k)

    @classmethod
    def tune(cls, uniform_times: Mapping[int, np.ndarray], top_k: int) -> StaticDispatcher:
        """Best configuration per batch size from times measured (or predicted) on
        uniform routing: ``{tokens: [samples, C] times}`` -> argmin of the mean time."""
        table = {}
        num_configs = 0
        for tokens, times in uniform_times.items():
            times = np.atleast_2d(np.asarray(times, dtype=np.float64))
            num_configs = times.shape[1]
            # Unmeasured configurations (all NaN for this size) can never be the pick.
            counts = np.isfinite(times).sum(axis=0)
            sums = np.where(np.isfinite(times), times, 0.0).sum(axis=0)
            mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)
            table[int(tokens)] = int(np.argmin(mean))
        return cls(table, top_k, num_configs)


class OracleDispatcher(Dispatcher):
    """Exhaustive search: the measured-fastest configuration of each known histogram."""

    name = "oracle"

    def __init__(self, hists: np.ndarray, times: np.ndarray) -> None:
        hists = np.atleast_2d(np.asarray(hists, dtype=np.int64))
        times = np.asarray(times, dtype=np.float64)
        if times.shape[0] != hists.shape[0]:
            raise InputError("OracleDispatcher: one row of times per histogram")
        best = np.nanargmin(np.where(np.isfinite(times), times, np.inf), axis=1)
        self._best = {h.tobytes(): int(b) for h, b in zip(hists, best)}

    def choose(self, hist: np.ndarray) -> int:
        key = np.asarray(hist, dtype=np.int64).tobytes()
        if key not in self._best:
            raise InputError("OracleDispatcher: this histogram was never measured")
        return self._best[key]
