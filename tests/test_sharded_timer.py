"""ShardedTimer's plumbing on the CPU: a stand-in family timer whose times are a known
function of (configuration, histogram, worker process), so a misplaced column, a lost
drop or a timing served by the wrong process shows. The real family (CuteTimer) runs in
the same workers on the GPU (bench/run_gpu.py, ``ramp profile --family cute``)."""

import os

import numpy as np
import pytest

from ramp.bank import KernelBank
from ramp.config import KernelConfig
from ramp.kernels.sharded_timer import ShardedTimer
from ramp.problem import MoEProblem

FACTORY = f"{__name__}:FormulaTimer"
PROBLEM = MoEProblem(8, 256, 128, 2)


def dropped(cfg: KernelConfig) -> bool:
    return cfg.num_stages == 3 and cfg.block_n == 64


def expected_us(cfg: KernelConfig, hist: np.ndarray) -> float:
    return cfg.block_m * 1000 + cfg.block_n + cfg.num_stages / 10 + float(hist.sum())


class FormulaTimer:
    """Drops 3-stage configs with 64 columns (as a failed compile would), times by
    formula, and refuses to time in any process but the one that built it."""

    family, family_version = "formula", "1"

    def __init__(self, problem, configs, *, seed=0, verify=True, progress=False):
        if problem.num_experts == 3:
            raise ValueError("three experts are refused")
        kept = [c for c in configs if not dropped(c)]
        self.dropped = {c.name: "3 stages" for c in configs if dropped(c)}
        self.verify_errors = {c.name: 0.0 for c in kept}
        self.bank = KernelBank.build(kept)
        self.num_sms = 132
        self.pid = os.getpid()

    def time_all(self, hist):
        assert os.getpid() == self.pid
        return np.array([expected_us(c, hist) for c in self.bank.configs])

    def device_info(self):
        return {"pid": self.pid}

    def close(self):
        self.bank = None


def configs():
    return [KernelConfig("formula", bm, bn, 64, num_stages=s)
            for bm in (16, 64, 128) for bn in (64, 128) for s in (3, 4)]


def test_bank_keeps_the_order_and_every_column_is_timed_by_its_owner():
    cfgs = configs()
    timer = ShardedTimer(FACTORY, PROBLEM, cfgs, jobs=3)
    assert list(timer.bank.configs) == [c for c in cfgs if not dropped(c)]
    assert set(timer.dropped) == {c.name for c in cfgs if dropped(c)}
    assert timer.device_info()["pid"] != os.getpid()
    hist = np.array([3, 0, 5, 0, 0, 1, 1, 2])
    times = timer.time_all(hist)
    assert times.tolist() == [expected_us(c, hist) for c in timer.bank.configs]
    timer.close()


def test_a_later_timer_reuses_the_workers_and_their_assignment():
    cfgs = configs()
    first = ShardedTimer(FACTORY, PROBLEM, cfgs, jobs=2)
    first.close()
    subset = cfgs[::-2]
    second = ShardedTimer(FACTORY, PROBLEM, subset, jobs=2)
    assert second._pool is first._pool
    hist = np.ones(8, int)
    kept = [c for c in subset if not dropped(c)]
    assert second.time_all(hist).tolist() == [expected_us(c, hist) for c in kept]
    second.close()


def test_a_worker_failure_is_raised_with_its_traceback():
    with pytest.raises(RuntimeError, match="three experts are refused"):
        ShardedTimer(FACTORY, MoEProblem(3, 256, 128, 2), configs(), jobs=2)
    # the pool still answers afterwards
    timer = ShardedTimer(FACTORY, PROBLEM, configs()[:4], jobs=2)
    assert len(timer.bank) == 3
    timer.close()
