"""Expert-parallel views: what each rank's grouped GEMM sees when E experts are spread
over ``ep`` ranks.

Under EP every rank holds ``E/ep`` whole experts and runs one grouped GEMM over the rows
routed to them, so its kernel choice depends on its *local* histogram (``E/ep`` counts)
and its local row count ``T*k`` (the rows it received), not on the global histogram; the
layer waits for the slowest rank. Two placements:

- ``contiguous``: rank ``r`` holds experts ``r*E/ep .. (r+1)*E/ep - 1`` (vLLM's and
  SGLang's default);
- ``balanced``: per layer, experts by decreasing load, each to the rank with the least
  load so far among those with a free slot. This is the greedy packing step of
  DeepSeek's EPLB without its replication of hot experts (every rank still holds exactly
  ``E/ep`` experts, so the local GEMM keeps its shape).

Placements are per layer (``experts[l, r]`` = the global ids rank ``r`` holds in layer
``l``, in local order); a contiguous placement is the same for every layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ramp.errors import InputError

PLACEMENTS = ("contiguous", "balanced")


@dataclass(frozen=True)
class ExpertPlacement:
    """``experts[l, r, j]``: global id of rank ``r``'s local expert ``j`` in layer ``l``."""

    experts: np.ndarray  # [layers, ep, E/ep] int64
    name: str = ""

    def __post_init__(self) -> None:
        e = self.experts
        if e.ndim != 3:
            raise InputError(f"placement must be [layers, ep, E/ep], got shape {list(e.shape)}")
        total = e.shape[1] * e.shape[2]
        if not all(np.array_equal(np.sort(layer.ravel()), np.arange(total)) for layer in e):
            raise InputError("placement must hold every expert exactly once per layer")

    @property
    def ep(self) -> int:
        return self.experts.shape[1]

    @property
    def num_experts(self) -> int:
        return self.experts.shape[1] * self.experts.shape[2]

    @classmethod
    def contiguous(cls, num_experts: int, ep: int, layers: int = 1) -> ExpertPlacement:
        """Rank ``r`` holds the ``r``-th block of ``E/ep`` consecutive expert ids."""
        _check_split(num_experts, ep)
        block = np.arange(num_experts, dtype=np.int64).reshape(ep, -1)
        return cls(np.broadcast_to(block, (layers, *block.shape)).copy(), "contiguous")

    @classmethod
    def balanced(cls, load: np.ndarray, ep: int) -> ExpertPlacement:
        """EPLB-style greedy by load (``load`` [layers, E] or [E], e.g. mean rows)."""
        load = np.atleast_2d(np.asarray(load, dtype=np.float64))
        layers, num_experts = load.shape
        _check_split(num_experts, ep)
        per_rank = num_experts // ep
        out = np.empty((layers, ep, per_rank), dtype=np.int64)
        for layer in range(layers):
            totals = np.zeros(ep)
            filled = np.zeros(ep, dtype=np.int64)
            for expert in np.argsort(-load[layer], kind="stable"):
                open_ranks = np.flatnonzero(filled < per_rank)
                rank = open_ranks[np.argmin(totals[open_ranks])]
                out[layer, rank, filled[rank]] = expert
                filled[rank] += 1
                totals[rank] += load[layer, expert]
        return cls(out, "balanced")

    @classmethod
    def make(cls, name: str, num_experts: int, ep: int, load: np.ndarray | None = None
             ) -> ExpertPlacement:
        """Placement ``name`` of PLACEMENTS (``balanced`` needs the per-layer load)."""
        if name == "contiguous":
            return cls.contiguous(num_experts, ep)
        if name == "balanced":
            if load is None:
                raise InputError("a balanced placement needs the experts' load")
            return cls.balanced(load, ep)
        raise InputError(f"expert placement {name!r} not in {PLACEMENTS}")

    def view(self, hists: np.ndarray) -> EPView:
        """Local histograms of histograms ``[..., layers, E]`` (``layers`` = this
        placement's, or 1 for a placement shared by every layer)."""
        hists = np.asarray(hists)
        if hists.ndim < 2 or hists.shape[-1] != self.num_experts:
            raise InputError(f"histograms [..., layers, {self.num_experts}] expected, got "
                             f"shape {list(hists.shape)}")
        layers = hists.shape[-2]
        experts = self.experts
        if experts.shape[0] == 1:
            experts = np.broadcast_to(experts, (layers, *experts.shape[1:]))
        elif experts.shape[0] != layers:
            raise InputError(f"placement has {experts.shape[0]} layers, histograms {layers}")
        flat = experts.reshape(layers, -1)                       # [L, E] in rank order
        local = np.take_along_axis(hists, np.broadcast_to(flat, hists.shape), axis=-1)
        return EPView(local.reshape(*hists.shape[:-1], self.ep, -1), self.name)


@dataclass(frozen=True)
class EPView:
    """Each rank's local histogram ``hists[..., r, :]`` (``E/ep`` counts) of one step."""

    hists: np.ndarray
    placement: str = ""

    @property
    def rows(self) -> np.ndarray:
        """Each rank's local ``T*k``: token-expert rows its grouped GEMM computes."""
        return self.hists.sum(axis=-1)

    @property
    def busiest_rank(self) -> np.ndarray:
        """The rank with the most rows per leading index: the one the layer waits for
        (time grows with rows), and the one a profile of the local problem trains on."""
        return self.rows.argmax(axis=-1)

    def busiest(self) -> np.ndarray:
        """The busiest rank's local histogram per leading index: ``[..., E/ep]``."""
        rank = self.busiest_rank[..., None, None]
        return np.take_along_axis(self.hists, rank, axis=-2)[..., 0, :]

    @property
    def imbalance(self) -> np.ndarray:
        """Busiest rank's rows over the mean rank's (1 = balanced), per leading index."""
        rows = self.rows
        mean = rows.mean(axis=-1)
        return np.where(mean > 0, rows.max(axis=-1) / np.maximum(mean, 1e-300), 1.0)


def local_tokens(tokens: int, ep: int) -> int:
    """The token key of an EP rank's profile tables for a layer call of ``tokens``
    tokens: a local profile keys its static table and model error on the rank's rows
    over top_k (``SamplePlan.histograms(problem, ep)``), about ``T/ep`` for a rank's mean
    share; at least 1."""
    _check_ep(ep)
    return max(1, round(tokens / ep))


def _check_ep(ep: int) -> None:
    if isinstance(ep, bool) or not isinstance(ep, (int, np.integer)) or ep < 1:
        raise InputError(f"ep must be a positive int, got {ep!r}")


def _check_split(num_experts: int, ep: int) -> None:
    _check_ep(ep)
    if num_experts % ep:
        raise InputError(f"{num_experts} experts do not split evenly over ep={ep} ranks")
