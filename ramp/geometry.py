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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ramp.bank import KernelBank
from ramp.problem import MoEProblem

FEATURE_NAMES = (
    "launch",         # 1: fixed cost of a call (launch, prologue, epilogue drain)
    "waves",          # ceil(tiles / slots): waves on the critical path (tail effect)
    "tile_waves",     # tiles / slots: work per SM, the throughput term
    "active_experts",  # experts with >= 1 row: distinct weight matrices streamed from HBM
    "padded_rows",    # rows computed including padding to block_m, per slot
    "last_wave_fill",  # fraction of the last wave's slots that hold a tile
    "row_waves",      # tile work of the routed rows alone (no padding to block_m), per slot
)


@dataclass(frozen=True)
class GridGeometry:
    """Grid features of every configuration of a bank for every histogram: arrays [H, C]."""

    tiles: np.ndarray
    slots: np.ndarray          # [C] CTAs one wave holds
    waves: np.ndarray
    tile_waves: np.ndarray
    last_wave_fill: np.ndarray
    padded_rows: np.ndarray
    row_waves: np.ndarray       # rows / block_m * column tiles * split_k / slots
    active_experts: np.ndarray  # [H]
    rows: np.ndarray            # [H] token-expert rows M = sum(h)

    def feature(self, name: str) -> np.ndarray:
        """Feature ``name`` of FEATURE_NAMES broadcast to [H, C] (float64)."""
        shape = self.tiles.shape
        if name == "launch":
            return np.ones(shape)
        if name == "active_experts":
            return np.broadcast_to(self.active_experts[:, None], shape).astype(np.float64)
        if name == "padded_rows":
            return self.padded_rows / self.slots[None, :]
        return np.asarray(getattr(self, name), dtype=np.float64)

    def features(self, names: tuple[str, ...]) -> np.ndarray:
        """Stack features into [H, C, F]."""
        return np.stack([self.feature(n) for n in names], axis=-1)



def max_row_tiles(rows: int, num_experts: int, block_m: int) -> int:
    """Upper bound on sum_e ceil(h[e]/block_m) given only M = T*k rows: at most
    min(E, M) experts are active and each wastes under one tile of padding."""
    active = min(num_experts, rows)
    return (rows + active * (block_m - 1)) // block_m

class GeometryPlan:
    """Per-bank constants precomputed once so that geometry costs a few numpy calls.

    The histogram enters only through ``sum_e ceil(h[e] / bm)`` for the few distinct
    block_m values of the bank, so a call is O(distinct_bm * E + C).
    """

    def __init__(self, bank: KernelBank, problem: MoEProblem, num_sms: int) -> None:
        cfgs = bank.configs
        block_m = np.array([c.block_m for c in cfgs], dtype=np.int64)
        self.distinct_bm, self.bm_index = np.unique(block_m, return_inverse=True)
        n_tiles = np.array([-(-problem.n // c.block_n) for c in cfgs], dtype=np.int64)
        split_k = np.array([c.split_k for c in cfgs], dtype=np.int64)
        self.tiles_per_row_tile = n_tiles * split_k
        self.slots = num_sms * bank.occupancy_array()
        self.block_m = block_m
        self.row_wave_per_row = self.tiles_per_row_tile / (block_m * self.slots)
        self._bm_col = self.distinct_bm[:, None]
        self.num_experts = problem.num_experts

    def row_tiles(self, hists: np.ndarray) -> np.ndarray:
        """[H, distinct_bm] total row tiles ``sum_e ceil(h[e] / bm)``."""
        return ((hists[:, None, :] + (self._bm_col - 1)) // self._bm_col).sum(axis=2)

    def tiles(self, hists: np.ndarray) -> np.ndarray:
        """[H, C] tiles (CTA work items) of every configuration."""
        return self.row_tiles(hists)[:, self.bm_index] * self.tiles_per_row_tile

    def geometry(self, hists: np.ndarray) -> GridGeometry:
        hists = np.atleast_2d(np.asarray(hists, dtype=np.int64))
        row_tiles = self.row_tiles(hists)[:, self.bm_index]
        tiles = row_tiles * self.tiles_per_row_tile
        slots = self.slots
        waves = -(-tiles // slots)
        last = np.where(tiles > 0, tiles - (waves - 1) * slots, 0) / slots
        return GridGeometry(
            tiles=tiles,
            slots=slots,
            waves=waves,
            tile_waves=tiles / slots,
            last_wave_fill=last,
            padded_rows=row_tiles * self.block_m,
            row_waves=hists.sum(axis=1)[:, None] * self.row_wave_per_row[None, :],
            active_experts=np.count_nonzero(hists, axis=1),
            rows=hists.sum(axis=1),
        )


def grid_geometry(bank: KernelBank, problem: MoEProblem, num_sms: int,
                  hists: np.ndarray) -> GridGeometry:
    """Grid geometry of every configuration of ``bank`` for histograms [H, E] (or [E])."""
    return GeometryPlan(bank, problem, num_sms).geometry(hists)
