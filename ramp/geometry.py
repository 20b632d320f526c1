"""CTA grid geometry: what a configuration launches for a histogram.

Everything the wave cost model sees comes from here, and nothing here depends on a
kernel's internals: only tile shapes, split-K, persistence and occupancy. That is what
makes the model kernel-agnostic (it applies unchanged to a black-box kernel whose tile
shapes are documented).

Per expert ``e`` a configuration computes ``ceil(h[e] / block_m)`` row tiles times
``ceil(N / block_n)`` column tiles times ``split_k`` reduction slices. One *wave* is
``num_sms * occupancy`` CTAs running at once. A persistent kernel launches at most one
wave of CTAs that loop over tiles, which has the same critical path (``ceil`` of tiles
per slot) as a one-tile-per-CTA grid, minus the per-CTA launch cost.

A configuration with two row-tile classes (``KernelConfig.small_rows`` > 0) tiles an
expert with ``h[e] <= small_rows`` rows by ``small_block_m`` rows and the others by
``block_m``: its tiles count both classes, and its padded rows weigh each tile by its
own row count (the feature that tells a mixed tiling from its large tile alone).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ramp.bank import KernelBank
from ramp.config import KernelConfig
from ramp.problem import MoEProblem

BASES = ("one", "active_experts", "tiles", "waves", "rows", "padded")


@dataclass(frozen=True)
class Feature:
    """One grid-geometry feature of the wave cost model.

    A *linear* feature is ``scale[c] * basis(h)``: a per-configuration constant (from the
    bank and the shape) times one histogram quantity of BASES (``tiles`` and ``waves``
    are per configuration, the others per histogram). That one table defines the
    features everywhere: ``GridGeometry.feature`` evaluates it, ``fold`` turns fitted
    parameters into one coefficient per basis (the host dispatcher's fast path, and the
    sync-free kernel's device-side model, which evaluates exactly these bases).
    ``basis`` None: not linear in one basis (evaluated by ``GridGeometry`` alone).
    """

    name: str
    basis: str | None
    scale: Callable[[GeometryPlan], np.ndarray] | None  # [C] factor of the basis
    meaning: str


def _one(plan: GeometryPlan) -> np.ndarray:
    return np.ones(plan.slots.shape)


FEATURES = (
    Feature("launch", "one", _one,
            "1: fixed cost of a call (launch, prologue, epilogue drain)"),
    Feature("waves", "waves", _one,
            "ceil(tiles / slots): waves on the critical path (tail effect)"),
    Feature("tile_waves", "tiles", lambda p: 1.0 / p.slots,
            "tiles / slots: work per SM, the throughput term"),
    Feature("active_experts", "active_experts", _one,
            "experts with >= 1 row: distinct weight matrices streamed from HBM"),
    Feature("padded_rows", "padded", lambda p: 1.0 / p.slots,
            "rows computed including padding (row tiles * their block_m), per slot"),
    Feature("last_wave_fill", None, None,
            "fraction of the last wave's slots that hold a tile"),
    Feature("row_waves", "rows", lambda p: p.tiles_per_row_tile / (p.block_m * p.slots),
            "tile work of the routed rows alone (no padding to block_m), per slot"),
)
FEATURE_NAMES = tuple(f.name for f in FEATURES)
FEATURE_BASIS = {f.name: f.basis for f in FEATURES}
LINEAR_FEATURES = tuple(f.name for f in FEATURES if f.basis is not None)


@dataclass(frozen=True)
class GridGeometry:
    """Grid features of every configuration of a bank for every histogram: arrays [H, C]."""

    tiles: np.ndarray
    slots: np.ndarray          # [C] CTAs one wave holds
    waves: np.ndarray
    last_wave_fill: np.ndarray
    active_experts: np.ndarray  # [H]
    rows: np.ndarray            # [H] token-expert rows M = sum(h)
    padded: np.ndarray          # [H, C] rows computed: each row tile counts its block_m
    scales: dict[str, np.ndarray]  # [C] per linear feature (GeometryPlan.scales)

    def basis(self, name: str) -> np.ndarray:
        """Histogram quantity ``name`` of BASES broadcast to [H, C] (float64)."""
        shape = self.tiles.shape
        if name == "one":
            return np.ones(shape)
        if name in ("active_experts", "rows"):
            return np.broadcast_to(getattr(self, name)[:, None], shape).astype(np.float64)
        return np.asarray(getattr(self, name), dtype=np.float64)

    def feature(self, name: str) -> np.ndarray:
        """Feature ``name`` of FEATURE_NAMES at [H, C] (float64)."""
        basis = FEATURE_BASIS[name]
        if basis is None:
            return np.asarray(getattr(self, name), dtype=np.float64)
        return self.basis(basis) * self.scales[name][None, :]

    def features(self, names: tuple[str, ...]) -> np.ndarray:
        """Stack features into [H, C, F]."""
        return np.stack([self.feature(n) for n in names], axis=-1)

    @property
    def tile_waves(self) -> np.ndarray:
        return self.feature("tile_waves")

    @property
    def row_waves(self) -> np.ndarray:
        return self.feature("row_waves")

    @property
    def padded_rows(self) -> np.ndarray:
        """Rows computed including each expert's padding to its row tile."""
        return self.padded


def max_row_tiles(rows: int, num_experts: int, block_m: int) -> int:
    """Upper bound on sum_e ceil(h[e]/block_m) given only M = T*k rows: at most
    min(E, M) experts are active and each wastes under one tile of padding."""
    active = min(num_experts, rows)
    return (rows + active * (block_m - 1)) // block_m


def max_class_row_tiles(rows: int, num_experts: int, cfg: KernelConfig) -> int:
    """Upper bound on the row tiles of ``cfg``'s two row-tile classes given only M = T*k
    (``max_row_tiles`` for a one-class configuration). An expert has no more tiles than
    with small tiles alone, nor than ceil(small_rows / small_block_m) small tiles or its
    large tiles."""
    if not cfg.small_rows:
        return max_row_tiles(rows, num_experts, cfg.block_m)
    per_small = -(-cfg.small_rows // cfg.small_block_m)
    mixed = min(num_experts, rows) * per_small + max_row_tiles(rows, num_experts, cfg.block_m)
    return min(max_row_tiles(rows, num_experts, cfg.small_block_m), mixed)


class GeometryPlan:
    """Per-bank constants precomputed once so that geometry costs a few numpy calls.

    The histogram enters only through ``ceil(h[e] / bm)`` for the few distinct row-tile
    sizes of the bank, combined per distinct row tiling ``(small_block_m, small_rows,
    block_m)`` (one-class configurations: small_rows 0), so a call is O(tilings * E + C).
    """

    def __init__(self, bank: KernelBank, problem: MoEProblem, num_sms: int) -> None:
        cfgs = bank.configs
        block_m = np.array([c.block_m for c in cfgs], dtype=np.int64)
        tilings = np.array([(c.small_block_m or c.block_m, c.small_rows, c.block_m)
                            for c in cfgs], dtype=np.int64).reshape(-1, 3)
        self.tilings, self.tiling_index = np.unique(tilings, axis=0, return_inverse=True)
        self.tiling_index = self.tiling_index.reshape(-1)
        self.distinct_bm = np.unique(self.tilings[:, [0, 2]])
        self.small_index = np.searchsorted(self.distinct_bm, self.tilings[:, 0])
        self.large_index = np.searchsorted(self.distinct_bm, self.tilings[:, 2])
        n_tiles = np.array([-(-problem.n // c.block_n) for c in cfgs], dtype=np.int64)
        split_k = np.array([c.split_k for c in cfgs], dtype=np.int64)
        self.tiles_per_row_tile = n_tiles * split_k
        self.slots = num_sms * bank.occupancy_array()
        self.block_m = block_m
        self._bm_col = self.distinct_bm[:, None]
        self.num_experts = problem.num_experts
        self.scales = {f.name: f.scale(self) for f in FEATURES if f.scale is not None}

    def ceils(self, hists: np.ndarray) -> np.ndarray:
        """[H, distinct_bm, E] ``ceil(h[e] / bm)`` for every row-tile size of the bank."""
        return (hists[:, None, :] + (self._bm_col - 1)) // self._bm_col

    def class_tiles(self, hists: np.ndarray, ceils: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
        """([H, tilings] row tiles, [H, tilings] padded rows) from ``ceils``: an expert
        with at most small_rows rows takes the small tile, the others the large one (the
        one-class sums, corrected where a tiling has a small class)."""
        sums = ceils.sum(axis=2)
        tiles = sums[:, self.large_index]
        padded = tiles * self.tilings[:, 2]
        for t in np.flatnonzero(self.tilings[:, 1]):
            small = hists <= self.tilings[t, 1]
            ts, tl = ceils[:, self.small_index[t]], ceils[:, self.large_index[t]]
            tiles[:, t] += np.where(small, ts - tl, 0).sum(axis=1)
            padded[:, t] += np.where(small, ts * self.tilings[t, 0] - tl * self.tilings[t, 2],
                                     0).sum(axis=1)
        return tiles, padded

    def row_tiles(self, hists: np.ndarray) -> np.ndarray:
        """[H, tilings] total row tiles (``sum_e ceil(h[e] / bm)`` for one class)."""
        return self.class_tiles(hists, self.ceils(hists))[0]

    def tiles(self, hists: np.ndarray) -> np.ndarray:
        """[H, C] tiles (CTA work items) of every configuration."""
        return self.row_tiles(hists)[:, self.tiling_index] * self.tiles_per_row_tile

    def geometry(self, hists: np.ndarray) -> GridGeometry:
        hists = np.atleast_2d(np.asarray(hists, dtype=np.int64))
        row_tiles, padded = self.class_tiles(hists, self.ceils(hists))
        tiles = row_tiles[:, self.tiling_index] * self.tiles_per_row_tile
        slots = self.slots
        waves = -(-tiles // slots)
        last = np.where(tiles > 0, tiles - (waves - 1) * slots, 0) / slots
        return GridGeometry(
            tiles=tiles,
            slots=slots,
            waves=waves,
            last_wave_fill=last,
            active_experts=np.count_nonzero(hists, axis=1),
            rows=hists.sum(axis=1),
            padded=padded[:, self.tiling_index],
            scales=self.scales,
        )

    def fold(self, features: tuple[str, ...], params: np.ndarray
             ) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
        """Fitted parameters ``[C, F]`` over ``features`` as one coefficient per basis:
        ``[C, len(BASES)]`` such that the linear features' part of the prediction is
        ``sum_b coef[:, b] * basis_b``, plus the non-linear features' own parameters
        ``[(name, [C])]`` (evaluated through ``geometry``)."""
        coef = np.zeros((params.shape[0], len(BASES)))
        other = []
        for f, name in enumerate(features):
            basis = FEATURE_BASIS[name]
            if basis is None:
                other.append((name, params[:, f]))
            else:
                coef[:, BASES.index(basis)] += params[:, f] * self.scales[name]
        return coef, other


def grid_geometry(bank: KernelBank, problem: MoEProblem, num_sms: int,
                  hists: np.ndarray) -> GridGeometry:
    """Grid geometry of every configuration of ``bank`` for histograms [H, E] (or [E])."""
    return GeometryPlan(bank, problem, num_sms).geometry(hists)
