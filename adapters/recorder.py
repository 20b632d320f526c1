"""Routing-trace recording inside a serving engine, safe under CUDA graphs.

Engines replay decode steps from CUDA graphs, and a replay runs no Python: a recorder
that copies each histogram to the host from the forward pass would see only eager
steps. So the forward pass only launches a small Triton kernel per MoE layer (captured
into the graph like any other kernel) that adds the layer's expert histogram into a
device-side ring of steps, ``ring[step % R, layer, expert]``, and one more per step that
opens the step's slot; a device counter says how many steps have started. A background thread copies finished steps to pinned
host memory on its own stream, waits on a CUDA event, and appends them to a
``trace.jsonl`` with ``ramp.trace.TraceWriter``.

The forward pass never waits for the host: if the writer falls more than ``R`` steps
behind, the ring overwrites the oldest steps and they are counted as dropped (a step
number is stored with every slot, so an overwritten slot is never written as the wrong
step). The poller runs in CUDA's *relaxed* stream-capture mode: in the default global
mode any event wait by another thread invalidates a graph being captured.

Layers are numbered by first call order: the recorder watches one forward pass, and
when the first layer's key comes round again it knows the layer count, allocates the
ring and starts recording. Steps that ran before the engine's last CUDA-graph capture
(profiling and warm-up passes on dummy inputs) are left out of the trace: engines
capture at start-up, so finished steps are held back until no capture has been seen for
``hold_seconds``, and only then written (or dropped as warm-up).
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import triton
import triton.language as tl

from ramp.errors import InputError
from ramp.models import MODELS, get_model
from ramp.problem import DTYPE_BYTES
from ramp.trace import TraceHeader, TraceStep, TraceWriter

logger = logging.getLogger("ramp.adapters")

BLOCK = 1024
ITERS = 4             # ids per counting CTA: ITERS * BLOCK
CHUNK_STEPS = 64      # steps per host copy: bounds the pinned staging buffer
SAFETY_STEPS = 4      # never read a slot the writer is this close to reusing
CLOSE_JOIN_S = 10.0   # the longest close() waits for the writer thread
MAX_HELD = 1024       # steps held back at most (about 2.5 MB per 100 steps at 48 x 128)
_RELAXED = 2          # cudaStreamCaptureModeRelaxed


@triton.jit
def _open_step_kernel(ring_ptr, stepno_ptr, stamp_ptr, cursor_ptr, R, LE,
                      BLOCK: tl.constexpr, CLOCK: tl.constexpr):
    """One CTA, before the first MoE layer of a step: stamp the step's ring slot with the
    step number (and the GPU's nanosecond clock), zero it, then advance the counter."""
    cur = tl.load(cursor_ptr)
    slot = cur % R
    tl.store(stepno_ptr + slot, cur)
    if CLOCK:
        now = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [],
                                        dtype=tl.int64, is_pure=False, pack=1)
        tl.store(stamp_ptr + slot, now)
    for start in range(0, LE, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        tl.store(ring_ptr + slot * LE + offs, tl.zeros([BLOCK], dtype=tl.int32),
                 mask=offs < LE)
    tl.debug_barrier()
    tl.store(cursor_ptr, cur + 1)


@triton.jit
def _count_kernel(ids_ptr, n, ring_ptr, cursor_ptr, layer, R, LE, E: tl.constexpr,
                  E_POW2: tl.constexpr, BLOCK: tl.constexpr, ITERS: tl.constexpr):
    """Add this layer's expert histogram into the current step's slot: each CTA counts
    ``ITERS * BLOCK`` ids in registers and adds its counts atomically. Ids outside
    ``[0, E)`` (padding, experts of other ranks) land in a spare bin, not counted."""
    slot = (tl.load(cursor_ptr) + R - 1) % R
    experts = tl.arange(0, E_POW2)
    counts = tl.zeros([E_POW2], dtype=tl.int32)
    for it in range(ITERS):
        offs = (tl.program_id(0) * ITERS + it) * BLOCK + tl.arange(0, BLOCK)
        ids = tl.load(ids_ptr + offs, mask=offs < n, other=E).to(tl.int32)
        counts += tl.histogram(tl.where((ids >= 0) & (ids < E), ids, E), E_POW2)
    tl.atomic_add(ring_ptr + slot * LE + layer * E + experts, counts,
                  mask=(experts < E) & (counts > 0))


@dataclass
class RecorderStats:
    """What happened to the steps the engine ran (all counts are steps)."""

    recorded: int = 0   # appended to the trace
    dropped: int = 0    # overwritten in the ring before the writer read them
    warmup: int = 0     # ran before the engine's last CUDA-graph capture: left out
    invalid: int = 0    # layer sums disagree (e.g. ids of other EP ranks): left out


def relax_stream_capture_mode() -> None:
    """Let this thread wait on its own CUDA events while another thread captures a graph.

    PyTorch does not expose ``cudaThreadExchangeStreamCaptureMode``, so it is called on
    the ``libcudart`` that torch loaded (the mode is per thread, per runtime instance).
    """
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "libcudart.so" in line}
    if not paths:
        raise RuntimeError("libcudart is not loaded in this process")
    lib = ctypes.CDLL(sorted(paths)[0])
    mode = ctypes.c_int(_RELAXED)
    err = lib.cudaThreadExchangeStreamCaptureMode(ctypes.byref(mode))
    if err != 0:
        raise RuntimeError(f"cudaThreadExchangeStreamCaptureMode returned error {err}")


def trace_header(moe_layers: int, num_experts: int, top_k: int, hidden: int,
                 intermediate: int, dtype: torch.dtype, model: str | None,
                 engine: str, engine_version: str) -> TraceHeader:
    """Header for what one GPU saw: named after the catalog model of that routing shape.

    ``intermediate`` is this GPU's shard; a catalog match restores the model's width
    and infers the tensor-parallel degree. ``model`` (a catalog slug, Hugging Face id or
    local path) wins when it names a catalog model of the recorded shape.
    """
    shape = (moe_layers, num_experts, top_k, hidden)
    candidates = []
    if model:
        for name in (model, Path(model).name):
            try:
                candidates.append(get_model(name))
            except InputError:
                continue
    candidates += list(MODELS.values())
    match = next((m for m in candidates
                  if (m.moe_layers, m.num_experts, m.top_k, m.hidden) == shape), None)
    name = str(dtype).removeprefix("torch.")
    meta = {"recorder": "ramp.adapters", "activation_dtype": name}
    kwargs: dict[str, Any] = dict(
        moe_layers=moe_layers, num_experts=num_experts, top_k=top_k, hidden=hidden,
        dtype=name if name in DTYPE_BYTES else "bfloat16", source="recorded",
        engine=engine, engine_version=engine_version, meta=meta)
    if match is not None and match.moe_intermediate % intermediate == 0:
        return TraceHeader(model=match.name, layers=match.layers,
                           moe_intermediate=match.moe_intermediate,
                           tp=match.moe_intermediate // intermediate, **kwargs)
    return TraceHeader(model=model or "unknown", layers=moe_layers,
                       moe_intermediate=intermediate, **kwargs)


class TraceRecorder:
    """Records the expert histogram of every MoE layer of every forward step.

    ``observe`` is the hot path (one kernel launch, no host sync, capturable); the
    poller thread does all copying and writing. ``path`` may contain ``{rank}`` and
    ``{pid}``; it is resolved when recording starts, after the engine set up its
    process group.
    """

    def __init__(self, path: str, *, ring_steps: int = 256, poll_seconds: float = 0.05,
                 hold_seconds: float = 30.0, model: str | None = None, engine: str = "",
                 engine_version: str = "", start_thread: bool = True) -> None:
        if ring_steps <= 2 * SAFETY_STEPS:
            raise InputError(f"ring_steps (RAMP_RING_STEPS) must be > {2 * SAFETY_STEPS}, "
                             f"got {ring_steps}")
        self.path_template = path
        self.ring_steps = ring_steps
        self.poll_seconds = poll_seconds
        self.hold_seconds = hold_seconds
        self.model = model
        self.engine = engine
        self.engine_version = engine_version
        self.start_thread = start_thread
        self.stats = RecorderStats()
        self.path: Path | None = None
        self.header: TraceHeader | None = None
        self._layers: dict[Hashable, int] = {}
        self._first_key: Hashable | None = None
        self._shape: tuple[int, int, int, int, torch.dtype] | None = None
        self._top_k = 0
        self._ring: torch.Tensor | None = None
        self._host_steps = 0     # steps the host launched eagerly (not under capture)
        self._keep_from = 0      # first step after the last capture: dummy passes before
        self._quiet_since = 0.0  # when recording started or the last capture was seen
        self._held: deque[tuple[int, np.ndarray, float | None]] = deque()
        self._next = 0           # next step number the poller will read
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed: str | None = None        # why recording stopped
        self._poll_failed: str | None = None   # ... when the poller itself failed
        self._closed = False
        self._warned: set[str] = set()

    # --- hot path -------------------------------------------------------------------

    def observe(self, key: Hashable, topk_ids: torch.Tensor, *, num_experts: int,
                hidden: int, intermediate: int, dtype: torch.dtype) -> None:
        """Count ``topk_ids`` [T, k] into the current step's slot for layer ``key``.

        Runs on every MoE layer of every eager step, so it does as little as it can in
        Python (graph replays do not run it at all)."""
        layer = self._layers.get(key) if self._ring is not None else None
        if layer is None or self._failed is not None:
            if self._failed is None:
                self._first_pass(key, topk_ids, num_experts, hidden, intermediate, dtype)
            return
        if topk_ids.shape[1] != self._top_k or topk_ids.device != self._device:
            self._warn_once(f"record: a call on {topk_ids.device} with top-k "
                            f"{topk_ids.shape[1]} does not match the recording "
                            f"({self._device}, top-k {self._top_k}); not recorded")
            return
        if layer == 0:
            self._open_step(topk_ids.is_cuda and torch.cuda.is_current_stream_capturing())
        ids = topk_ids.view(-1) if topk_ids.is_contiguous() else topk_ids.reshape(-1)
        n = ids.numel()
        launch = self._launches.get(n)
        if launch is None:
            # Small steps get a block that fits them: masked lanes all hit the spare bin.
            block = min(BLOCK, triton.next_power_of_2(max(n, 1)))
            iters = min(ITERS, triton.cdiv(max(n, 1), block))
            launch = self._launches[n] = ((max(1, triton.cdiv(n, block * iters)),),
                                          dict(BLOCK=block, ITERS=iters, **self._constants))
        _count_kernel[launch[0]](ids, n, self._ring, self._cursor, layer, self.ring_steps,
                                 self._slot_size, **launch[1])

    def _open_step(self, capturing: bool) -> None:
        if capturing:  # engines capture at start-up: every step so far was a warm-up
            self._keep_from = self._host_steps
            self._quiet_since = time.monotonic()
        else:
            self._host_steps += 1
        _open_step_kernel[(1,)](self._ring, self._stepno, self._stamp, self._cursor,
                                self.ring_steps, self._slot_size, BLOCK=BLOCK,
                                CLOCK=self._ring.is_cuda)

    def _first_pass(self, key: Hashable, topk_ids: torch.Tensor, num_experts: int,
                    hidden: int, intermediate: int, dtype: torch.dtype) -> None:
        """Before recording starts, learn the layers; after, warn about a new one."""
        if self._ring is not None:
            self._warn_once(f"record: MoE layer {key!r} was not seen in the first forward "
                            "pass; it is not recorded")
            return
        capturing = topk_ids.is_cuda and torch.cuda.is_current_stream_capturing()
        if self._discover(key, topk_ids, capturing, num_experts, hidden, intermediate,
                          dtype):
            self.observe(key, topk_ids, num_experts=num_experts, hidden=hidden,
                         intermediate=intermediate, dtype=dtype)

    def _discover(self, key: Hashable, topk_ids: torch.Tensor, capturing: bool,
                  num_experts: int, hidden: int, intermediate: int,
                  dtype: torch.dtype) -> bool:
        """Learn the layer order from the first pass; start recording on the second."""
        if key not in self._layers:
            if self._first_key is None:
                self._first_key = key
                self._shape = (num_experts, topk_ids.shape[1], hidden, intermediate, dtype)
            self._layers[key] = len(self._layers)
            return False
        if key != self._first_key or capturing:
            return False  # allocate only between passes, and never inside a capture
        self._start(topk_ids.device)
        return True

    # --- setup and the poller -------------------------------------------------------

    def _start(self, device: torch.device) -> None:
        assert self._shape is not None
        num_experts, self._top_k, hidden, intermediate, dtype = self._shape
        layers, ring = len(self._layers), self.ring_steps
        self.header = trace_header(layers, num_experts, self._top_k, hidden, intermediate,
                                   dtype, self.model, self.engine, self.engine_version)
        self.path = Path(self.path_template.format(rank=_rank(), pid=os.getpid()))
        self._writer = TraceWriter(self.path, self.header)
        pin = device.type == "cuda"
        self._device = device
        self._slot_size = layers * num_experts
        self._constants = dict(E=num_experts, E_POW2=triton.next_power_of_2(num_experts + 1))
        self._launches: dict[int, tuple[tuple[int], dict[str, int]]] = {}
        chunk = min(CHUNK_STEPS, ring)
        # Engines run the forward pass (where this is called) in inference mode, whose
        # tensors may not be written outside it: the poller thread writes the staging
        # buffers, so every buffer is allocated as an ordinary tensor.
        with torch.inference_mode(False):
            self._ring = torch.zeros((ring, layers, num_experts), dtype=torch.int32,
                                     device=device)
            self._stepno = torch.full((ring,), -1, dtype=torch.int64, device=device)
            self._stamp = torch.zeros(ring, dtype=torch.int64, device=device)
            self._cursor = torch.zeros(1, dtype=torch.int64, device=device)
            self._stage = torch.empty((chunk, layers, num_experts), dtype=torch.int32,
                                      pin_memory=pin)
            self._stage_stepno = torch.empty(chunk, dtype=torch.int64, pin_memory=pin)
            self._stage_stamp = torch.empty(chunk + 1, dtype=torch.int64, pin_memory=pin)
            self._stage_cursor = torch.empty(1, dtype=torch.int64, pin_memory=pin)
        self._stream = torch.cuda.Stream(device) if pin else None
        self._event = torch.cuda.Event() if pin else None
        if self._stream is not None:  # the poller's copies come after the zero-filling
            self._stream.wait_stream(torch.cuda.current_stream(device))
        self._quiet_since = time.monotonic()
        logger.info("RaMP record: %d MoE layers x %d experts (top-%d) -> %s",
                    layers, num_experts, self._top_k, self.path)
        if self.start_thread:
            self._thread = threading.Thread(target=self._run, name="ramp-trace-recorder",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        assert self._ring is not None
        try:
            if self._ring.is_cuda:
                torch.cuda.set_device(self._ring.device)
                relax_stream_capture_mode()
            while not self._stop.wait(self.poll_seconds):
                self.poll()
        except Exception as exc:  # the server must not go down because of recording
            self._failed = self._poll_failed = f"{type(exc).__name__}: {exc}"
            logger.error("RaMP record stopped: %s", self._failed)

    def _copy(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        """Device-to-host copy on the recorder's stream (plain copy on the CPU)."""
        if self._stream is None:
            dst.copy_(src)
            return
        with torch.cuda.stream(self._stream):
            dst.copy_(src, non_blocking=True)

    def _wait(self) -> None:
        if self._event is not None:
            self._event.record(self._stream)
            self._event.synchronize()

    def _read_cursor(self) -> int:
        self._copy(self._stage_cursor, self._cursor)
        self._wait()
        return int(self._stage_cursor[0])

    def poll(self, final: bool = False) -> None:
        """Append every finished step to the trace. A step is finished once the next one
        has started; ``final`` (the engine is stopped) takes the last one too."""
        if self._ring is None or self._closed:
            return
        with self._lock:
            cursor = self._read_cursor()
            done = cursor if final else cursor - 1
            oldest = cursor - (self.ring_steps - SAFETY_STEPS)
            if self._next < oldest:
                self.stats.dropped += oldest - self._next
                self._next = oldest
            while self._next < done:
                self._read_chunk(self._next, min(done, self._next + len(self._stage)), cursor)
            self._release(final)

    def _read_chunk(self, first: int, end: int, cursor: int) -> None:
        count, ring = end - first, self.ring_steps
        self._copy_slots(self._stage, self._ring, first, count)
        self._copy_slots(self._stage_stepno, self._stepno, first, count)
        # Clock stamps of these steps and of the one after (a step lasts until the next
        # one opens); the last started step has no successor yet.
        stamps = min(count + 1, cursor - first)
        self._copy_slots(self._stage_stamp, self._stamp, first, stamps)
        after = self._read_cursor()  # waits for the copies above too (same stream)
        for i, step in enumerate(range(first, end)):
            if step < self._keep_from:
                self.stats.warmup += 1
            elif int(self._stage_stepno[i]) != step or after - step > ring - SAFETY_STEPS:
                self.stats.dropped += 1
            else:
                ns = (int(self._stage_stamp[i + 1]) - int(self._stage_stamp[i])
                      if i + 1 < stamps and self._ring.is_cuda else 0)
                self._held.append((step, self._stage[i].numpy().copy(),
                                   ns / 1e6 if ns > 0 else None))
        self._next = end

    def _copy_slots(self, dst: torch.Tensor, src: torch.Tensor, first: int, count: int
                    ) -> None:
        """``dst[:count]`` = ring slots of steps ``first .. first+count-1`` (wrapping)."""
        lo = first % self.ring_steps
        head = min(count, self.ring_steps - lo)
        self._copy(dst[:head], src[lo:lo + head])
        if head < count:
            self._copy(dst[head:count], src[:count - head])

    def _release(self, final: bool) -> None:
        """Write held steps once start-up is over (no capture for ``hold_seconds``),
        leaving out those that ran before the last capture."""
        settled = final or time.monotonic() - self._quiet_since >= self.hold_seconds
        while self._held and (settled or len(self._held) > MAX_HELD):
            step, hists, step_ms = self._held.popleft()
            if step < self._keep_from:
                self.stats.warmup += 1
            else:
                self._append(step, hists.astype(np.int64), step_ms)

    def _append(self, step: int, hists: np.ndarray, step_ms: float | None = None) -> None:
        sums = hists.sum(axis=1)
        rows = int(sums[0])
        if rows == 0 and not hists.any():
            return  # an empty pass (e.g. an idle expert-parallel rank)
        if np.any(sums != rows) or rows % self._top_k or hists.max() > rows // self._top_k:
            self.stats.invalid += 1
            if self.stats.invalid == 1:
                logger.warning("RaMP record: step %d has per-layer sums %s, not one "
                               "multiple of top-k %d (rank-local expert ids?); such steps "
                               "are left out and counted", step, sorted(set(sums.tolist())),
                               self._top_k)
            return
        self._writer.append(TraceStep(step=step, phase="mixed", tokens=rows // self._top_k,
                                      hists=hists, step_ms=step_ms))
        self.stats.recorded += 1

    def stop(self, reason: str) -> None:
        """Stop recording now, from the hot path (no sync, no file access): ``observe``
        returns at once from here on, the poller ends at its next wake-up; ``close``
        still writes the trace read so far."""
        self._failed = self._failed or reason
        self._stop.set()

    def close(self) -> None:
        """Stop the poller and write what is left (call when the engine is idle); safe to
        call twice. The device ring stays allocated: CUDA graphs the engine captured
        keep counting into it when replayed."""
        self.stop("closed")
        if self._thread is not None:
            self._thread.join(timeout=CLOSE_JOIN_S)
            if self._thread.is_alive():  # a poll stuck in I/O: never hang the exit
                logger.error("RaMP record: the writer thread did not stop within %.0f s; "
                             "%s may miss its last steps", CLOSE_JOIN_S, self.path)
                return
        if self._ring is None or self._closed:
            return
        try:
            if self._ring.is_cuda:
                torch.cuda.synchronize(self._ring.device)
            if self._poll_failed is None:  # what the ring holds is still good
                self.poll(final=True)
        finally:
            self._closed = True
            self._writer.close()
        logger.info("RaMP record: %s: %s", self.path, self.stats)

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            logger.warning(message)


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
