"""Choosing the branches of a polymorphic (sync-free) kernel from exhaustive measurements.

A sync-free kernel cannot launch an arbitrary configuration of the bank: the host never
sees the histogram, so the launch (grid, warps, pipeline depth) is fixed and only the
tile shape can vary per call, inside the kernel. The question is which few tile shapes
to compile into it. Greedy set cover answers it: start from the configuration that is
best on average, then repeatedly add the one that most lowers the mean time of
"best branch per call", within one launch group (same warps, stages, persistence).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from ramp.bank import KernelBank
from ramp.errors import InputError


@dataclass(frozen=True)
class BranchSet:
    """Selected configuration indices and the mean regret their oracle mix would have."""

    indices: tuple[int, ...]
    mean_regret: float


def launch_group(bank: KernelBank, i: int) -> tuple[int, int]:
    c = bank.configs[i]
    return (c.num_warps, c.num_stages)


def select_branches(bank: KernelBank, times: np.ndarray, max_branches: int = 4) -> BranchSet:
    """Best ``max_branches`` persistent configurations sharing warps and stages.

    ``times`` [H, C] exhaustive measurements (NaN allowed). Regret is measured against
    the whole bank's per-call best, so it says what restricting to one launch costs.
    """
    times = np.asarray(times, dtype=np.float64)
    best = np.nanmin(times, axis=1)
    filled = np.where(np.isfinite(times), times, np.inf)
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, cfg in enumerate(bank.configs):
        if cfg.persistent and np.isfinite(filled[:, i]).all():
            groups[launch_group(bank, i)].append(i)
    if not groups:
        raise InputError("no persistent configuration was measured on every histogram")
    candidates = []
    for members in groups.values():
        chosen: list[int] = []
        current = np.full(times.shape[0], np.inf)
        for _ in range(min(max_branches, len(members))):
            gains = [np.mean(np.minimum(current, filled[:, m])) for m in members]
            pick = members[int(np.argmin(gains))]
            if pick in chosen:
                break
            chosen.append(pick)
            current = np.minimum(current, filled[:, pick])
        candidates.append(BranchSet(tuple(chosen), float(np.mean(current / best - 1))))
    return min(candidates, key=lambda b: b.mean_regret)
