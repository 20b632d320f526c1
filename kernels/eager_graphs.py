"""Eager calls of a whole-layer path replayed from CUDA graphs, to take the host off them.

An engine's eager steps (prefill chunks beyond its captured sizes) are host-bound: in
vLLM 0.26 on the H200 a Qwen3-30B-A3B prefill-heavy run kept the GPU busy 56-61% of its
profiled steps, and RaMP's eager layer (five Triton launches and their Python) cost the
host 207-630 us a call with TMA (``adapters.plan.host_us``; ~83 us more than vLLM's
kernel under vLLM's profiler). Replayed, 46-163 us. A layer path's launches depend only on T and the
tensors' addresses, so an eager call of a size that recurs (prefill chunks are mostly
``max_num_batched_tokens`` tokens) can replay a graph captured once per (layer, T):
the host then pays three input copies, one replay and one output copy.

``EagerGraphs(layer)`` wraps a layer callable (``kernels.layers``' contract). A call runs
the layer as it is inside an engine's own capture, off the GPU, on another stream than
the first call's (the static buffers are shared, so every call must be ordered on one
stream), after a failed capture, and the first ``min_calls - 1`` times this layer's
weights see a size (a size of a step or two is never captured). After that, the call's
inputs are copied into static buffers of that size (shared by every layer, which run one
after the other on the stream). The first such call runs the layer eagerly on them (its
result is the call's, and every kernel and specialisation the static tensors need is
compiled and loaded) and then captures it; later ones replay the graph; the static
output is copied out. Every capture of a wrapper goes into one memory pool: a graph's
pool memory is scratch allocated and freed inside its own capture (inputs, outputs and
weights live outside), so graphs may replay in any order, one at a time. At most
``max_sizes`` sizes keep graphs (least recently used dropped). Capture uses
``capture_begin``/``capture_end`` on a side stream in thread-local mode: no device
synchronisation, no garbage collection, nothing that disturbs the engine's other threads.
A capture that fails (CUDA invalidated it, or the layer raised) ends the pool's
allocation, keeps the graph object alive (the allocator may still reference it) and
turns the wrapper off; the error is raised for the caller's fallback.
"""

from __future__ import annotations

import contextlib
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

Layer = Callable[..., torch.Tensor]
MIN_CALLS = 3     # eager calls of a size by one layer's weights before it is captured
MAX_SIZES = 4     # sizes whose graphs are kept
MAX_SEEN = 1 << 16  # (size, layer) counts kept before they start over


@dataclass
class _Size:
    """One size's static inputs and output (shared by the layers) and its graphs."""

    x: torch.Tensor
    ids: torch.Tensor
    weights: torch.Tensor
    out: torch.Tensor
    graphs: dict[tuple, torch.cuda.CUDAGraph] = field(default_factory=dict)


class EagerGraphs:
    """A layer path whose eager calls of recurring sizes replay CUDA graphs."""

    def __init__(self, layer: Layer, *, min_calls: int = MIN_CALLS,
                 max_sizes: int = MAX_SIZES) -> None:
        if min_calls < 2 or max_sizes < 1:
            raise ValueError("EagerGraphs needs min_calls >= 2 (one eager run compiles "
                             "the kernels first) and max_sizes >= 1")
        self.layer = layer
        self.min_calls = min_calls
        self.max_sizes = max_sizes
        self.seen: Counter = Counter()
        self.sizes: OrderedDict[tuple, _Size] = OrderedDict()
        self.captures = 0
        self.replays = 0
        self.disabled = False  # a capture failed: every call runs the layer as it is
        self._pool = None      # one memory pool for every capture: one replays at a time
        self._side = None      # the capture stream
        self._stream = None    # the stream every call is ordered on
        self._failed: list[torch.cuda.CUDAGraph] = []  # kept alive, never destroyed

    def __call__(self, hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                 ids: torch.Tensor, weights: torch.Tensor, out: torch.Tensor | None = None,
                 expert_map: torch.Tensor | None = None) -> torch.Tensor:
        tokens = hidden.shape[0]
        if (self.disabled or not hidden.is_cuda or tokens == 0
                or torch.cuda.is_current_stream_capturing()):
            return self.layer(hidden, w13, w2, ids, weights, out, expert_map)
        stream = torch.cuda.current_stream(hidden.device)
        if self._stream is None:
            self._stream = stream
        if stream != self._stream:
            return self.layer(hidden, w13, w2, ids, weights, out, expert_map)
        key = (w13.data_ptr(), w2.data_ptr(), tuple(w13.shape), tuple(w2.shape),
               w13.stride(), w2.stride(), None if expert_map is None else expert_map.data_ptr())
        # per layer: a size its steps keep coming back to, not one step's 48 layers
        if len(self.seen) >= MAX_SEEN:
            self.seen.clear()
        self.seen[tokens, key] += 1
        if self.seen[tokens, key] < self.min_calls:
            return self.layer(hidden, w13, w2, ids, weights, out, expert_map)
        size = self._size(tokens, hidden, ids, weights, w2.shape[1])
        size.x.copy_(hidden)
        size.ids.copy_(ids)
        size.weights.copy_(weights)
        graph = size.graphs.get(key)
        if graph is None:  # this call's result from an eager run, then the capture
            self.layer(size.x, w13, w2, size.ids, size.weights, size.out, expert_map)
            size.graphs[key] = self._capture(size, w13, w2, expert_map)
        else:
            graph.replay()
            self.replays += 1
        return size.out.clone() if out is None else out.copy_(size.out)

    def _size(self, tokens: int, hidden: torch.Tensor, ids: torch.Tensor,
              weights: torch.Tensor, width: int) -> _Size:
        """The static buffers of this size and these dtypes, made on first use; the least
        recently used size beyond ``max_sizes`` is dropped with its graphs."""
        key = (tokens, hidden.dtype, ids.dtype, tuple(ids.shape), weights.dtype, width)
        size = self.sizes.get(key)
        if size is None:
            size = _Size(torch.empty_like(hidden, memory_format=torch.contiguous_format),
                         torch.empty_like(ids, memory_format=torch.contiguous_format),
                         torch.empty_like(weights, memory_format=torch.contiguous_format),
                         hidden.new_empty(tokens, width))
            self.sizes[key] = size
            while len(self.sizes) > self.max_sizes:
                self.sizes.popitem(last=False)
        self.sizes.move_to_end(key)
        return size

    def _capture(self, size: _Size, w13: torch.Tensor, w2: torch.Tensor,
                 expert_map: torch.Tensor | None) -> torch.cuda.CUDAGraph:
        """The layer on ``size``'s static tensors, captured (not run) on a side stream
        that waits for the engine's work so far."""
        device = size.x.device
        if self._side is None:
            self._side = torch.cuda.Stream(device=device)
        if self._pool is None or not any(s.graphs for s in self.sizes.values()):
            # a pool whose last graph is gone may not be captured into again
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        current, side = torch.cuda.current_stream(device), self._side
        side.wait_stream(current)
        with torch.cuda.stream(side):
            graph.capture_begin(pool=self._pool, capture_error_mode="thread_local")
            try:
                result = self.layer(size.x, w13, w2, size.ids, size.weights, size.out,
                                    expert_map)
            except BaseException:
                self._abandon(graph, device)
                raise
            self._end(graph, device)
        current.wait_stream(side)
        if result.data_ptr() != size.out.data_ptr():
            self.disabled = True
            raise RuntimeError("EagerGraphs: the layer did not write its out= tensor; a "
                               "replay would return stale rows")
        self.captures += 1
        return graph

    def _end(self, graph: torch.cuda.CUDAGraph, device: torch.device) -> None:
        try:
            graph.capture_end()
        except BaseException:
            self._abandon(graph, device, ended=False)
            raise

    def _abandon(self, graph: torch.cuda.CUDAGraph, device: torch.device,
                 ended: bool | None = None) -> None:
        """A failed capture: end it (torch's capture_end stops allocating to the pool
        only once the stream capture ended well, so do that here too), keep the graph
        alive (the allocator may still point at it) and turn the wrapper off."""
        if ended is None:
            try:
                graph.capture_end()
            except BaseException:
                ended = False
        if ended is False:
            end = (getattr(torch._C, "_cuda_endAllocateToPool", None)
                   or getattr(torch._C, "_cuda_endAllocateCurrentStreamToPool", None))
            if end is not None:  # a RuntimeError: torch had got past it (instantiation failed)
                with contextlib.suppress(RuntimeError):
                    end(device.index, self._pool)
        self._failed.append(graph)
        self._pool, self.disabled = None, True
