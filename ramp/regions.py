"""Performance-region analysis: which kernel optimisation pays off where, from hardware
constants alone (no measurements).

For one MoE grouped GEMM on one GPU, over a grid of tokens per step T and routing skew
(Zipf exponent s), each cell gets:

* the roofline floor: active experts' weights streamed once plus activations, against
  2*M*N*K useful FLOPs, and whether that makes the cell memory- or compute-bound;
* the predicted time of a baseline configuration (64x128 tile, one tile per CTA) and of
  five single-feature alternatives under a small analytic wave model;
* the region code: the alternative with the largest predicted gain (or ``OK`` when none
  beats the baseline by ``min_gain``) and a sentence saying why.

Histograms are the expected ones under the skew: each expert's inclusion probability
comes from :func:`ramp.histograms.inclusion_probabilities` and a few seeded Binomial draws
give the integer counts that tile quantisation needs. docs/regions.md documents the wave
model, its assumptions and its limits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ramp.errors import InputError
from ramp.hardware import GPUSpec
from ramp.histograms import inclusion_probabilities, sample_topk, zipf_popularity
from ramp.plaindata import save_figure
from ramp.problem import MoEProblem

DEFAULT_TOKENS: tuple[int, ...] = tuple(2**i for i in range(15))  # 1 .. 16384
DEFAULT_SKEWS: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)

# Region codes, in tie-break order (the simpler optimisation wins a near tie).
CODES: dict[str, str] = {
    "OK": "baseline 64x128 tile, one tile per CTA, is within min_gain of every alternative",
    "M16": "small M tile (16/32 rows): few rows per active expert, a 64-row tile is mostly padding",
    "SK": "split-K: too few CTAs to keep every SM streaming weights; split the reduction",
    "WN": "wide N tile (256): fewer, larger tiles give a better last wave / fewer operand re-reads",
    "PG": "persistent grid, stream-K tail: the last wave is poorly filled; spread it over all SMs",
    "TC": "large tiles + TMA/wgmma (128x256, warp-specialised): compute-bound, tensor cores starve",
}
_TIE = 0.01  # gains within 1 point count as a tie


@dataclass(frozen=True)
class RegionAssumptions:
    """The few constants the wave model needs beyond the datasheet, all documented guesses.

    ``overlap``: fraction of the shorter of (memory, MMA) time a software-pipelined CTA
    hides behind the longer one; ``tma_overlap`` the same for a warp-specialised TMA +
    wgmma kernel (sm_90+), used by the TC alternative. ``l2_bandwidth_ratio``: L2-to-SM
    operand bandwidth as a multiple of HBM bandwidth. ``saturating_ctas_per_sm``: CTAs per
    SM needed to reach full HBM bandwidth (fewer get a proportional share).
    """

    block_k: int = 64
    max_stages: int = 4
    base_block_m: int = 64
    base_block_n: int = 128
    overlap: float = 0.5
    tma_overlap: float = 0.9
    l2_bandwidth_ratio: float = 3.0
    saturating_ctas_per_sm: float = 1.0
    min_gain: float = 0.03
    samples: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("block_k", "max_stages", "base_block_m", "base_block_n", "samples"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InputError(f"RegionAssumptions.{name} must be a positive int, got {value!r}")
        for name in ("overlap", "tma_overlap"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"RegionAssumptions.{name} must be in [0, 1]")
        for name in ("l2_bandwidth_ratio", "saturating_ctas_per_sm"):
            if not getattr(self, name) > 0:
                raise InputError(f"RegionAssumptions.{name} must be > 0")
        if self.min_gain < 0:
            raise InputError("RegionAssumptions.min_gain must be >= 0")


@dataclass
class RegionCell:
    """Prediction for one (tokens, skew) cell. Times in microseconds.

    ``gains`` maps each alternative code to ``t_baseline / t_alternative - 1`` (absent
    where the alternative does not apply). Geometry fields describe the baseline tile.
    """

    tokens: int
    skew: float
    code: str
    bound: str  # "memory" or "compute", from the roofline floor
    intensity: float  # useful FLOPs per HBM byte
    active_experts: float  # expected experts with >= 1 row
    rows_per_expert: float  # token-expert rows per active expert
    max_rows: float  # expected rows of the hottest expert
    pad_efficiency: float  # useful rows / rows computed with the baseline block_m
    ctas: float  # baseline CTAs (mean over samples)
    waves: float  # baseline CTAs / (SMs * occupancy)
    last_wave_fill: float  # fraction of the last wave's slots that hold a CTA
    floor_us: float
    baseline_us: float
    best_us: float
    gains: dict[str, float] = field(default_factory=dict)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RegionReport:
    """The region grid of one problem on one GPU, with the memory->compute boundary.

    ``crossover_tokens[s]`` is the (real-valued) T where the useful arithmetic intensity
    reaches the ridge point under skew s; None if it never does below 2**24 tokens.
    """

    gpu: GPUSpec
    problem: MoEProblem
    tokens: tuple[int, ...]
    skews: tuple[float, ...]
    ridge: float
    cells: list[RegionCell]
    crossover_tokens: dict[float, float | None]
    assumptions: RegionAssumptions = field(default_factory=RegionAssumptions)

    def cell(self, tokens: int, skew: float) -> RegionCell:
        """The cell for ``tokens`` and ``skew`` (InputError if not on the grid)."""
        for c in self.cells:
            if c.tokens == tokens and math.isclose(c.skew, skew):
                return c
        raise InputError(f"no region cell for tokens={tokens}, skew={skew}")

    def codes(self) -> list[list[str]]:
        """Region codes as rows (one per skew) of columns (one per token count)."""
        by_key = {(c.skew, c.tokens): c.code for c in self.cells}
        return [[by_key[(s, t)] for t in self.tokens] for s in self.skews]

    def format_table(self) -> str:
        """Compact text grid: rows = Zipf skew, columns = T; '*' marks compute-bound cells."""
        by_key = {(c.skew, c.tokens): c for c in self.cells}
        width = max(5, *(len(_short(t)) + 1 for t in self.tokens))
        lines = [
            f"RaMP regions: {self.gpu.name} ({self.gpu.sms} SMs, ridge {self.ridge:.0f} FLOP/B),"
            f" {self.problem.key}",
            "zipf s \\ T" + "".join(f"{_short(t):>{width}}" for t in self.tokens),
        ]
        for s in self.skews:
            row = "".join(
                f"{by_key[(s, t)].code + ('*' if by_key[(s, t)].bound == 'compute' else ''):>{width}}"
                for t in self.tokens
            )
            lines.append(f"{s:>10.2f}" + row)
        lines.append("memory -> compute bound at T ~ " + ", ".join(
            f"s={s:g}: " + ("never" if x is None else f"{x:.0f}")
            for s, x in self.crossover_tokens.items()
        ))
        lines.append("* = compute-bound floor. Legend:")
        lines.extend(f"  {code:<4} {text}" for code, text in CODES.items())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpu": self.gpu.to_dict(),
            "problem": self.problem.to_dict(),
            "tokens": list(self.tokens),
            "skews": list(self.skews),
            "ridge": self.ridge,
            "crossover_tokens": {str(s): x for s, x in self.crossover_tokens.items()},
            "assumptions": asdict(self.assumptions),
            "legend": dict(CODES),
            "cells": [c.to_dict() for c in self.cells],
        }


def _short(t: int) -> str:
    return f"{t // 1024}k" if t >= 1024 and t % 1024 == 0 else str(t)


# --- the wave model ------------------------------------------------------------------


@dataclass(frozen=True)
class _Option:
    """One tile configuration the model can time."""

    block_m: int
    block_n: int
    split_k: int = 1
    streamk_tail: bool = False
    overlap: float = 0.5


class _Machine:
    """Per-GPU, per-problem constants of the wave model."""

    def __init__(self, gpu: GPUSpec, problem: MoEProblem, a: RegionAssumptions) -> None:
        self.gpu, self.problem, self.a = gpu, problem, a
        self.sms = gpu.sms
        self.bw = gpu.hbm_bandwidth
        self.peak = gpu.peak_flops(problem.dtype)
        self.l2bw = a.l2_bandwidth_ratio * gpu.hbm_bandwidth
        self.db = problem.dtype_bytes

    def occupancy(self, bm: int, bn: int) -> int:
        """CTAs per SM for a bm x bn tile: shared memory (>= 2 stages), registers, CTA cap."""
        stage = (bm + bn) * self.a.block_k * self.db
        stages = min(self.a.max_stages, self.gpu.smem_per_block // stage)
        if stages < 2:
            return 0
        threads = 128 if bm * bn <= 64 * 128 else 256
        regs = bm * bn + 64 * threads  # fp32 accumulators + per-thread working set
        return int(min(self.gpu.max_ctas_per_sm, self.gpu.smem_per_sm // (stages * stage),
                       self.gpu.regs_per_sm // regs))

    def wave(self, nw: np.ndarray, hbm_c: np.ndarray, l2_c: np.ndarray, fl_c: np.ndarray,
             overlap: float) -> np.ndarray:
        """Time of one wave of ``nw`` equal CTAs, each moving hbm_c/l2_c bytes, fl_c FLOPs.

        HBM bandwidth is shared by the wave but needs ``saturating_ctas_per_sm * SMs`` CTAs
        to saturate; L2 likewise needs one CTA per SM; CTAs on one SM share its tensor
        cores. Memory and MMA time overlap by ``overlap``.
        """
        nw = np.asarray(nw, dtype=np.float64)
        t_hbm = hbm_c * np.maximum(nw, self.sms * self.a.saturating_ctas_per_sm) / self.bw
        t_l2 = l2_c * np.maximum(nw, self.sms) / self.l2bw
        t_mma = np.ceil(nw / self.sms) * fl_c / (self.peak / self.sms)
        t_mem = np.maximum(t_hbm, t_l2)
        t = np.maximum(t_mem, t_mma) + (1.0 - overlap) * np.minimum(t_mem, t_mma)
        return np.where(nw > 0, t, 0.0)

    def time(self, opt: _Option, hists: np.ndarray) -> np.ndarray | None:
        """Predicted seconds per histogram sample, or None if the tile does not fit."""
        p, db = self.problem, self.db
        occ = self.occupancy(opt.block_m, opt.block_n)
        if occ == 0 or p.k % opt.split_k or p.k // opt.split_k < 2 * self.a.block_k:
            return None
        slots = self.sms * occ
        rows = hists.sum(axis=1).astype(np.float64)
        m_tiles = np.ceil(hists / opt.block_m).sum(axis=1)
        n_tiles = math.ceil(p.n / opt.block_n)
        tiles = m_tiles * n_tiles
        hbm = self.hbm_bytes((hists > 0).sum(axis=1), rows / p.top_k)
        # Per tile (whole K): weight bytes streamed once per expert, shared among its tiles.
        hbm_tile = hbm / np.maximum(tiles, 1)
        l2_tile = (opt.block_m + opt.block_n) * p.k * db
        fl_tile = 2.0 * opt.block_m * opt.block_n * p.k
        if opt.streamk_tail:
            full = tiles // slots
            rem = tiles - full * slots
            t = full * self.wave(slots, hbm_tile, l2_tile, fl_tile, opt.overlap)
            iters = rem * (p.k // self.a.block_k)
            n_sk = np.minimum(slots, iters)
            share = rem / np.maximum(n_sk, 1)
            fixup = 2.0 * 4 * opt.block_n * rows / np.maximum(m_tiles, 1)  # one fp32 partial
            return t + self.wave(n_sk, hbm_tile * share, l2_tile * share + fixup,
                                 fl_tile * share, opt.overlap)
        sk = opt.split_k
        ctas = tiles * sk
        # Split-K partial sums: every slice writes and re-reads fp32 rows x N through L2.
        partial = 2.0 * 4 * sk * rows * p.n / np.maximum(ctas, 1) if sk > 1 else 0.0
        full = ctas // slots
        rem = ctas - full * slots
        args = (hbm_tile / sk, l2_tile / sk + partial, fl_tile / sk)
        return full * self.wave(slots, *args, opt.overlap) + self.wave(rem, *args, opt.overlap)

    def hbm_bytes(self, active: np.ndarray | float, tokens: np.ndarray | float) -> Any:
        """Floor HBM bytes: active experts' weights once, input activations, output rows.

        w13 reads each token's activations once (gathered); w2 reads every token-expert
        row. Both write every token-expert row.
        """
        p = self.problem
        rows = tokens * p.top_k
        rows_in = tokens if p.gemm == "w13" else rows
        return self.db * (active * p.n * p.k + rows_in * p.k + rows * p.n)


def _expected_active(pi: np.ndarray, tokens: float) -> float:
    return float(np.sum(-np.expm1(tokens * np.log1p(-np.minimum(pi, 1 - 1e-16)))))


def _crossover(machine: _Machine, pi: np.ndarray, ridge: float) -> float | None:
    """Real-valued T where useful FLOPs per floor byte reach the ridge point."""
    p = machine.problem

    def intensity(t: float) -> float:
        hbm = machine.hbm_bytes(_expected_active(pi, t), t)
        return float(2.0 * t * p.top_k * p.n * p.k / hbm)

    lo, hi = 0.0, 24.0  # log2 T
    if intensity(1.0) >= ridge:
        return 1.0
    if intensity(2.0**hi) < ridge:
        return None
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if intensity(2.0**mid) < ridge else (lo, mid)
    return 2.0**hi


def _options(machine: _Machine) -> dict[str, list[_Option]]:
    """Single-feature alternatives to the baseline, by region code."""
    a = machine.a
    bm, bn, ov = a.base_block_m, a.base_block_n, a.overlap
    tc_overlap = a.tma_overlap if machine.gpu.arch_number >= 90 else ov
    big = [o for o in (_Option(128, 256, overlap=tc_overlap), _Option(128, 128, overlap=tc_overlap))
           if machine.occupancy(o.block_m, o.block_n)][:1]
    return {
        "M16": [_Option(m, bn, overlap=ov) for m in (16, 32) if m < bm],
        "SK": [_Option(bm, bn, split_k=s, overlap=ov) for s in (2, 4, 8)],
        "WN": [_Option(bm, 256, overlap=ov)] if bn < 256 else [],
        "PG": [_Option(bm, bn, streamk_tail=True, overlap=ov)],
        "TC": big,
    }


def _describe(code: str, cell: RegionCell, machine: _Machine) -> str:
    if code == "OK":
        return "the baseline tile already sits near the model's best single change"
    if code == "M16":
        a = machine.a
        occ = [machine.occupancy(m, a.base_block_n) for m in (16, a.base_block_m)]
        return (f"{cell.rows_per_expert:.1f} rows per active expert: a {a.base_block_m}-row"
                f" tile computes {1 / max(cell.pad_efficiency, 1e-9):.1f}x the useful rows;"
                f" 16-row tiles also fit {occ[0]} CTAs per SM instead of {occ[1]}")
    if code == "SK":
        return (f"{cell.ctas:.0f} CTAs < {machine.sms * machine.a.saturating_ctas_per_sm:.0f}"
                " needed to saturate HBM; split-K multiplies CTAs")
    if code == "WN":
        return (f"{cell.waves:.2f} waves with the last {cell.last_wave_fill:.0%} full; 256-wide"
                " tiles halve the tile count and A-operand re-reads")
    if code == "PG":
        return (f"{cell.waves:.2f} waves with the last {cell.last_wave_fill:.0%} full; a"
                " persistent stream-K tail spreads the remainder over every SM")
    if cell.bound == "compute":
        return ("compute-bound: 128-row x 256-col tiles double operand reuse per byte of L2"
                " traffic and warp-specialised TMA/wgmma keep the tensor cores fed")
    return ("memory-bound, but the 64x128 tile's MMA and L2 operand time is not hidden behind"
            " the weight stream; larger tiles with TMA/wgmma pipelines overlap them")


_EXACT_SAMPLING_LIMIT = 1 << 20  # tokens x experts x samples drawn token by token


def _sample(popularity: np.ndarray, pi: np.ndarray, tokens: int, top_k: int, samples: int,
            rng: np.random.Generator) -> np.ndarray:
    """Histograms under the skew: exact token-level top-k while cheap, else per-expert
    Binomial(T, pi_e) counts (accurate once T is large; their sum is only T*k on average)."""
    if tokens * popularity.size * samples <= _EXACT_SAMPLING_LIMIT:
        return sample_topk(popularity, tokens, top_k, n=samples, seed=rng)
    return rng.binomial(tokens, np.minimum(pi, 1.0), size=(samples, pi.size))


def _cell(machine: _Machine, popularity: np.ndarray, pi: np.ndarray, tokens: int, skew: float,
          rng: np.random.Generator) -> RegionCell:
    p, a = machine.problem, machine.a
    hists = _sample(popularity, pi, tokens, p.top_k, a.samples, rng)
    active = _expected_active(pi, tokens)
    rows = tokens * p.top_k
    flops = 2.0 * rows * p.n * p.k
    hbm = float(machine.hbm_bytes(active, float(tokens)))
    t_mem, t_cmp = hbm / machine.bw, flops / machine.peak
    base = _Option(a.base_block_m, a.base_block_n, overlap=a.overlap)
    t_base = machine.time(base, hists)
    if t_base is None:
        raise InputError(
            f"gpu {machine.gpu.name}: baseline tile {base.block_m}x{base.block_n} does not fit"
            f" in smem_per_block={machine.gpu.smem_per_block}"
        )
    base_mean = float(t_base.mean())
    slots = machine.sms * machine.occupancy(base.block_m, base.block_n)
    m_tiles = np.ceil(hists / base.block_m).sum(axis=1)
    ctas = m_tiles * math.ceil(p.n / base.block_n)
    waves = ctas / slots
    frac = waves - np.floor(waves)
    fill = np.where((frac == 0) & (ctas > 0), 1.0, frac)
    gains: dict[str, float] = {}
    best_times: dict[str, float] = {}
    for code, opts in _options(machine).items():
        if code == "PG" and not np.any(ctas > slots):
            continue  # a single partial wave has no tail to balance: that is split-K's case
        times = [t for t in (machine.time(o, hists) for o in opts) if t is not None]
        if times:
            best_times[code] = min(float(t.mean()) for t in times)
            gains[code] = base_mean / best_times[code] - 1.0
    top = max(gains.values(), default=0.0)
    code = "OK"
    if top >= a.min_gain:
        floor_gain = max(top - _TIE, a.min_gain)
        code = next(c for c in CODES if c in gains and gains[c] >= floor_gain)
    cell = RegionCell(
        tokens=tokens, skew=float(skew), code=code,
        bound="memory" if t_mem >= t_cmp else "compute",
        intensity=flops / hbm, active_experts=active, rows_per_expert=rows / max(active, 1e-12),
        max_rows=float(hists.max(axis=1).mean()),
        pad_efficiency=float(rows / max((m_tiles * base.block_m).mean(), 1)),
        ctas=float(ctas.mean()), waves=float(waves.mean()), last_wave_fill=float(fill.mean()),
        floor_us=1e6 * max(t_mem, t_cmp), baseline_us=1e6 * base_mean,
        best_us=1e6 * min([base_mean, *best_times.values()]),
        gains={k: round(v, 4) for k, v in gains.items()},
    )
    cell.reason = (
        f"{cell.bound}-bound (AI {cell.intensity:.3g} vs ridge {machine.peak / machine.bw:.0f}"
        f" FLOP/B), {active:.1f} active experts x {cell.rows_per_expert:.1f} rows; "
        f"{_describe(code, cell, machine)}"
        + (f" (predicted {gains[code]:+.0%})" if code in gains else "")
    )
    return cell


def _check_grid(tokens: Sequence[int], skews: Sequence[float]) -> tuple[tuple, tuple]:
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence) or not tokens:
        raise InputError(f"tokens must be a non-empty list of positive ints, got {tokens!r}")
    for t in tokens:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t <= 0:
            raise InputError(f"tokens: {t!r} is not a positive int")
    if isinstance(skews, (str, bytes)) or not isinstance(skews, Sequence) or not skews:
        raise InputError(f"skews must be a non-empty list of Zipf exponents, got {skews!r}")
    for s in skews:
        if isinstance(s, bool) or not isinstance(s, (int, float, np.integer, np.floating)) or (
            not math.isfinite(s) or s < 0
        ):
            raise InputError(f"skews: {s!r} is not a finite Zipf exponent >= 0")
    return (tuple(sorted({int(t) for t in tokens})),
            tuple(sorted({float(s) for s in skews})))


def analyze_regions(
    gpu: GPUSpec,
    problem: MoEProblem,
    tokens: Sequence[int] = DEFAULT_TOKENS,
    skews: Sequence[float] = DEFAULT_SKEWS,
    assumptions: RegionAssumptions | None = None,
) -> RegionReport:
    """Predict the winning optimisation in every (tokens, Zipf skew) cell.

    Uses only ``gpu``'s datasheet constants and ``problem``'s shape; deterministic for a
    given ``assumptions.seed``. Raises InputError for a GPU without bandwidth/FLOP figures
    (an uncatalogued live device) or a dtype it has no tensor peak for.
    """
    if not isinstance(gpu, GPUSpec):
        raise InputError(f"gpu must be a GPUSpec (see ramp.hardware.get_gpu), got {type(gpu).__name__}")
    if not isinstance(problem, MoEProblem):
        raise InputError(f"problem must be a MoEProblem, got {type(problem).__name__}")
    if gpu.hbm_bandwidth <= 0 or gpu.sms <= 0:
        raise InputError(f"gpu {gpu.name!r}: hbm_bandwidth/sms missing (no catalog entry)")
    a = assumptions or RegionAssumptions()
    token_grid, skew_grid = _check_grid(tokens, skews)
    machine = _Machine(gpu, problem, a)
    ridge = machine.peak / machine.bw
    cells: list[RegionCell] = []
    crossover: dict[float, float | None] = {}
    for s in skew_grid:
        popularity = zipf_popularity(problem.num_experts, s)
        pi = inclusion_probabilities(popularity, problem.top_k)
        crossover[s] = _crossover(machine, pi, ridge)
        for t in token_grid:  # seeded per cell: a cell does not depend on the rest of the grid
            rng = np.random.default_rng([a.seed, t, round(s * 1e6)])
            cells.append(_cell(machine, popularity, pi, t, s, rng))
    return RegionReport(gpu=gpu, problem=problem, tokens=token_grid, skews=skew_grid,
                        ridge=ridge, cells=cells, crossover_tokens=crossover, assumptions=a)


_COLORS = {"OK": "#d9d9d9", "M16": "#8dd3c7", "SK": "#fdb462", "WN": "#bebada",
           "PG": "#80b1d3", "TC": "#fb8072"}


def plot_regions(report: RegionReport, path: str | Path) -> Path:
    """Write a PNG heatmap of the region codes; the black line is the memory->compute edge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    codes = list(CODES)
    grid = np.array([[codes.index(c) for c in row] for row in report.codes()])
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * len(report.tokens), 1.6 + 0.5 * len(report.skews)))
    ax.imshow(grid, cmap=ListedColormap([_COLORS[c] for c in codes]), vmin=0,
              vmax=len(codes) - 1, aspect="auto", origin="lower")
    by_key = {(c.skew, c.tokens): c for c in report.cells}
    for yi, s in enumerate(report.skews):
        for xi, t in enumerate(report.tokens):
            c = by_key[(s, t)]
            label = c.code + ("*" if c.bound == "compute" else "")
            ax.text(xi, yi, label, ha="center", va="center", fontsize=7)
    log_t = np.log2(np.array(report.tokens, dtype=np.float64))
    for yi, s in enumerate(report.skews):
        x = report.crossover_tokens.get(s)
        if x is not None and log_t[0] <= math.log2(x) <= log_t[-1]:
            xpos = float(np.interp(math.log2(x), log_t, np.arange(len(log_t))))
            ax.plot([xpos, xpos], [yi - 0.5, yi + 0.5], color="black", linewidth=2)
    ax.set_xticks(range(len(report.tokens)), [_short(t) for t in report.tokens], fontsize=7)
    ax.set_yticks(range(len(report.skews)), [f"{s:g}" for s in report.skews])
    ax.set_xlabel("tokens per step T")
    ax.set_ylabel("Zipf skew s")
    ax.set_title(f"{report.gpu.name}: {report.problem.key}\n* compute-bound, | memory->compute",
                 fontsize=9)
    ax.legend(handles=[Patch(color=_COLORS[c], label=c) for c in codes],
              loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    fig.tight_layout()
    out = Path(path)
    save_figure(fig, out)
    plt.close(fig)
    return out
