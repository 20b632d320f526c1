"""Profile one bank from several processes: build in parallel, time one at a time.

A CuTe DSL kernel lives in the process that traced it (nvidia-cutlass-dsl 4.3 cannot
load one compiled elsewhere without tvm-ffi), and tracing is single-threaded Python at
about 1.5 s per configuration and GEMM: a 165-configuration bank costs four minutes of
GPU-machine time before the first timing. Here ``jobs`` worker processes each own a
share of the configurations and build their family timers (compile, verify) at the
same time; then, per histogram, the workers time their shares one after another, so
no two timings ever share the GPU. Workers live as long as this process and keep their
compiled kernels: a second model, or a timer over a subset of the bank (the
side-by-side runs), compiles nothing again.

Each worker holds its own copy of the weights, so ``jobs`` is bounded by GPU memory as
well as by CPU cores.
"""

from __future__ import annotations

import atexit
import importlib
import multiprocessing
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ramp.bank import KernelBank
from ramp.config import KernelConfig
from ramp.errors import InputError
from ramp.problem import MoEProblem


def _load(factory: str):
    module, name = factory.split(":")
    return getattr(importlib.import_module(module), name)


def _serve(conn, factory: str) -> None:
    """Worker loop: build timers on request, time histograms, drop timers."""
    make = _load(factory)
    timers: dict[int, Any] = {}
    while True:
        op, handle, payload = conn.recv()
        if op == "stop":
            return
        try:
            if op == "build":
                problem = MoEProblem.from_dict(payload["problem"])
                configs = [KernelConfig.from_dict(d) for d in payload["configs"]]
                timer = make(problem, configs, **payload["options"])
                timers[handle] = timer
                reply = {"configs": [c.to_dict() for c in timer.bank.configs],
                         "occupancy": list(timer.bank.occupancy),
                         "dropped": timer.dropped, "verify_errors": timer.verify_errors,
                         "compile_seconds": getattr(timer, "compile_seconds", {}),
                         "device_info": timer.device_info(), "num_sms": timer.num_sms}
            elif op == "time":
                reply = timers[handle].time_all(payload)
            else:  # "drop"
                timers.pop(handle).close()
                reply = None
            conn.send(("ok", reply))
        except Exception:  # reported to the parent, which raises it there
            conn.send(("error", traceback.format_exc()))


@dataclass
class _Pool:
    """Worker processes of one timer factory, and which worker owns which config."""

    factory: str
    jobs: int
    conns: list = field(default_factory=list)
    procs: list = field(default_factory=list)
    owner: dict[KernelConfig, int] = field(default_factory=dict)
    next_handle: int = 0

    def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # CUDA cannot cross a fork
        for _ in range(self.jobs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(child, self.factory), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    def assign(self, configs: list[KernelConfig]) -> list[int]:
        """The worker of each config: where it was compiled before, else the least loaded."""
        load = np.bincount(list(self.owner.values()), minlength=self.jobs)
        for cfg in configs:
            if cfg not in self.owner:
                self.owner[cfg] = int(np.argmin(load))
                load[self.owner[cfg]] += 1
        return [self.owner[c] for c in configs]

    def send(self, worker: int, op: str, handle: int, payload: Any = None) -> None:
        self.conns[worker].send((op, handle, payload))

    def receive(self, worker: int) -> Any:
        status, reply = self.conns[worker].recv()
        if status == "error":
            raise RuntimeError(f"timer worker {worker} failed:\n{reply}")
        return reply

    def ask(self, worker: int, op: str, handle: int, payload: Any = None) -> Any:
        self.send(worker, op, handle, payload)
        return self.receive(worker)

    def stop(self) -> None:
        for conn, proc in zip(self.conns, self.procs):
            if proc.is_alive():
                conn.send(("stop", 0, None))
                proc.join(timeout=10)


_POOLS: dict[tuple[str, int], _Pool] = {}


def _pool(factory: str, jobs: int) -> _Pool:
    if (factory, jobs) not in _POOLS:
        pool = _Pool(factory, jobs)
        pool.start()
        _POOLS[factory, jobs] = pool
        atexit.register(pool.stop)
    return _POOLS[factory, jobs]


class ShardedTimer:
    """Implements ``ramp.profiler.Timer`` over ``jobs`` worker processes.

    ``factory`` names the family timer as ``"module:Class"``; it is called in each worker
    as ``Class(problem, configs, **options)`` and must be a ``BankTimer`` (with ``close``).
    The bank keeps the order of ``configs`` (less what a worker dropped)."""

    def __init__(self, factory: str, problem: MoEProblem, configs: list[KernelConfig], *,
                 jobs: int, **options: Any) -> None:
        if jobs < 1:
            raise InputError(f"jobs must be at least 1, got {jobs}")
        family_timer = _load(factory)
        self.family, self.family_version = family_timer.family, family_timer.family_version
        self.problem = problem
        self._pool = _pool(factory, jobs)
        self._handle = self._pool.next_handle
        self._pool.next_handle += 1
        workers = self._pool.assign(configs)
        shares = {w: [c for c, cw in zip(configs, workers) if cw == w] for w in set(workers)}
        for w, share in shares.items():  # all workers build at once
            self._pool.send(w, "build", self._handle, {
                "problem": problem.to_dict(), "configs": [c.to_dict() for c in share],
                "options": options})
        built, failures = {}, []
        for w in shares:  # read every reply before raising, so the pipes stay in step
            try:
                built[w] = self._pool.receive(w)
            except RuntimeError as exc:
                failures.append(exc)
        if failures:
            raise failures[0]
        self.dropped: dict[str, str] = {}
        self.verify_errors: dict[str, float] = {}
        self.compile_seconds: dict[str, float] = {}
        kept: dict[KernelConfig, int] = {}
        for reply in built.values():
            for d, occ in zip(reply["configs"], reply["occupancy"]):
                kept[KernelConfig.from_dict(d)] = occ
            self.dropped.update(reply["dropped"])
            self.verify_errors.update(reply["verify_errors"])
            self.compile_seconds.update(reply["compile_seconds"])
        first = built[min(built)] if built else None
        self._device_info = first["device_info"] if first else {}
        self.num_sms = first["num_sms"] if first else 0
        order = [c for c in configs if c in kept]
        self.bank = KernelBank.build(order, [kept[c] for c in order])
        column = {c: i for i, c in enumerate(order)}
        # Worker -> its configurations' columns in the bank, in its own bank order.
        self._columns = {w: [column[KernelConfig.from_dict(d)] for d in reply["configs"]]
                         for w, reply in built.items()}

    def time_all(self, hist: np.ndarray) -> np.ndarray:
        times = np.full(len(self.bank), np.nan)
        for w, columns in self._columns.items():  # one worker on the GPU at a time
            if columns:
                times[columns] = self._pool.ask(w, "time", self._handle, hist)
        return times

    def device_info(self) -> dict[str, Any]:
        return dict(self._device_info)

    def close(self) -> None:
        """Free the workers' timers (their weights); compiled kernels stay cached."""
        for w in self._columns:
            self._pool.ask(w, "drop", self._handle)
        self._columns = {}
