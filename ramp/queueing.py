"""Whether a serving run was above its engine's capacity, from its requests alone.

Above capacity a queue grows through the run, and TTFT then measures the queue's length
when a request arrived, not the engine: a run's TTFT percentiles say nothing about a
kernel unless the queue stayed flat. One test for measured runs (``bench/engine/bench.py``)
and simulated ones (``ramp.sim.metrics``), so that both call the same runs overloaded.
"""

from __future__ import annotations

from typing import Any

import numpy as np

OVERLOAD_GROWTH = 4.0  # TTFT p50 of the last tenth of arrivals over the first tenth's
OVERLOAD_MIN_TTFT_S = 1.0  # ... and the last tenth's above this: short queues are no verdict
MIN_REQUESTS = 50  # fewer served requests: no verdict


def queue_growth(arrival_s: np.ndarray, ttft_s: np.ndarray) -> dict[str, Any]:
    """``overloaded`` and the TTFT p50 of the first and last tenth of the requests in
    arrival order (NaN and not overloaded for a batch, where every request arrives at
    once, or fewer than ``MIN_REQUESTS``)."""
    arrival_s, ttft_s = np.asarray(arrival_s, float), np.asarray(ttft_s, float)
    order = np.argsort(arrival_s, kind="stable")
    arrivals, ttft = arrival_s[order], ttft_s[order]
    out: dict[str, Any] = {"overloaded": False, "ttft_p50_first_tenth_s": float("nan"),
                           "ttft_p50_last_tenth_s": float("nan")}
    if ttft.size < MIN_REQUESTS or arrivals[-1] <= arrivals[0]:
        return out
    tenth = ttft.size // 10
    first, last = float(np.median(ttft[:tenth])), float(np.median(ttft[-tenth:]))
    out.update(overloaded=bool(last > OVERLOAD_GROWTH * first and last > OVERLOAD_MIN_TTFT_S),
               ttft_p50_first_tenth_s=first, ttft_p50_last_tenth_s=last)
    return out
