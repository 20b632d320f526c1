"""The kernel bank: the polymorphic configurations RaMP chooses among.

A bank is plain data (configurations and the occupancy each achieves) so the core can
reason about it without importing any kernel. Kernel families build banks with their
own valid configuration spaces; banks of several families concatenate, which is how
RaMP chooses across families (Triton, CuTe, ``torch._grouped_mm``) per call.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ramp.config import KernelConfig
from ramp.errors import InputError


@dataclass(frozen=True)
class KernelBank:
    """Ordered configurations plus the CTAs per SM each one runs at (its occupancy).

    Occupancy is an assumption recorded with a profile: it fixes how many CTAs one wave
    holds (``num_sms * occupancy``), the unit the wave cost model counts in.
    """

    configs: tuple[KernelConfig, ...]
    occupancy: tuple[int, ...]
    # Mean rows per expert (sum(h) / E) for which a configuration can run at all, as
    # (low, high]: a black-box family (torch._grouped_mm) picks its own tile from that
    # average, so each of its documented tiles exists only on its side of the threshold.
    # None: every configuration runs on every histogram.
    applies: tuple[tuple[float, float], ...] | None = None
    _index: dict[KernelConfig, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.configs) == 0:
            raise InputError("KernelBank needs at least one configuration")
        if len(self.occupancy) != len(self.configs):
            raise InputError(
                f"KernelBank: {len(self.occupancy)} occupancies for {len(self.configs)} configs"
            )
        if any(int(o) < 1 for o in self.occupancy):
            raise InputError("KernelBank: occupancy must be >= 1 CTA per SM")
        if self.applies is not None and len(self.applies) != len(self.configs):
            raise InputError("KernelBank: one applicability window per configuration")
        index = {cfg: i for i, cfg in enumerate(self.configs)}
        if len(index) != len(self.configs):
            raise InputError("KernelBank: duplicate configurations")
        object.__setattr__(self, "_index", index)

    @classmethod
    def build(cls, configs: Iterable[KernelConfig], occupancy: Sequence[int] | int = 1,
              applies: Sequence[tuple[float, float]] | None = None) -> KernelBank:
        configs = tuple(configs)
        occ = (occupancy,) * len(configs) if isinstance(occupancy, int) else tuple(occupancy)
        windows = None if applies is None else tuple((float(a), float(b)) for a, b in applies)
        return cls(configs, tuple(int(o) for o in occ), windows)

    def __len__(self) -> int:
        return len(self.configs)

    def index(self, config: KernelConfig) -> int:
        try:
            return self._index[config]
        except KeyError:
            raise InputError(f"configuration {config.name} is not in this bank") from None

    @property
    def families(self) -> list[str]:
        return sorted({c.family for c in self.configs})

    def occupancy_array(self) -> np.ndarray:
        return np.asarray(self.occupancy, dtype=np.int64)

    def windows(self) -> tuple[tuple[float, float], ...]:
        return self.applies or ((0.0, np.inf),) * len(self.configs)

    def runnable(self, hists: np.ndarray) -> np.ndarray | None:
        """[H, C] mask of configurations that can run on each histogram (None: all)."""
        if self.applies is None:
            return None
        lo, hi = np.array(self.applies).T
        hists = np.atleast_2d(hists)
        mean_rows = hists.sum(axis=1, keepdims=True) / hists.shape[1]
        return (mean_rows > lo) & (mean_rows <= hi)

    def subset(self, indices: Sequence[int]) -> KernelBank:
        windows = None if self.applies is None else tuple(self.applies[i] for i in indices)
        return KernelBank(tuple(self.configs[i] for i in indices),
                          tuple(self.occupancy[i] for i in indices), windows)

    def __add__(self, other: KernelBank) -> KernelBank:
        both_open = self.applies is None and other.applies is None
        return KernelBank(self.configs + other.configs, self.occupancy + other.occupancy,
                          None if both_open else self.windows() + other.windows())

    def to_list(self) -> list[dict[str, Any]]:
        items = [dict(c.to_dict(), occupancy=o) for c, o in zip(self.configs, self.occupancy)]
        for item, (lo, hi) in zip(items, self.applies or ()):
            item["applies"] = [lo, None if np.isinf(hi) else hi]
        return items

    @classmethod
    def from_list(cls, items: Sequence[dict[str, Any]], where: str = "configs") -> KernelBank:
        if not isinstance(items, list) or not items:
            raise InputError(f"{where}: expected a non-empty list of configurations")
        configs, occ, windows = [], [], []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise InputError(f"{where}[{i}]: expected a mapping")
            item = copy.copy(item)  # a copy of a JsonMap keeps where it was read
            occ.append(item.pop("occupancy", 1))
            lo, hi = item.pop("applies", None) or (0.0, None)
            windows.append((float(lo), np.inf if hi is None else float(hi)))
            configs.append(KernelConfig.from_dict(item, where=f"{where}[{i}]"))
        bounded = any(w != (0.0, np.inf) for w in windows)
        return cls(tuple(configs), tuple(int(o) for o in occ),
                   tuple(windows) if bounded else None)
