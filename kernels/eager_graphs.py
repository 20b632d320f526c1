"""Eager calls of a whole-layer path replayed from CUDA graphs, to take the host off them.

An engine's eager steps (prefill chunks beyond its captured sizes) are host-bound: in
vLLM 0.26 on the H200 a Qwen3-30B-A3B prefill-heavy run kept the GPU busy 56-61% of its
profiled steps, and RaMP's eager layer (five Triton launches and their Python) cost the
host ~83 us more per call than vLLM's. A layer path's launches depend only on T and the
tensors' addresses, so an eager call of a size that recurs (prefill chunks are mostly
``max_num_batched_tokens`` tokens) can replay a graph captured once per (layer, T):
the host then pays three input copies, one replay and one output copy.

``EagerGraphs(layer)`` wraps a layer callable (``kernels.layers``' contract). A call runs
the layer as it is inside an engine's own capture, off the GPU, and the first
``min_calls - 1`` times this layer's weights see a size (a size of one step only is
never captured; one seen again has run, so every kernel is compiled). After that, the
call's inputs are copied into static buffers of that T (shared by every layer, which run
one after the other on the stream), the graph of this layer's weights at that T is
captured on first use (into one memory pool that all captures share: only one replays
at a time) and replayed, and the static output is copied out. At most ``max_sizes`` sizes keep graphs (least recently used dropped). Capture uses
``capture_begin``/``capture_end`` on a side stream in thread-local mode: no device
synchronisation, no garbage collection, nothing that disturbs the engine's other threads.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

Layer = Callable[..., torch.Tensor]
MIN_CALLS = 2     # eager calls of a size before its graphs are captured
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

    def matches(self, hidden: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                width: int) -> bool:
        return ((self.x.dtype, self.ids.dtype, self.weights.dtype, self.out.shape[1],
                 self.ids.shape[1], self.x.device)
                == (hidden.dtype, ids.dtype, weights.dtype, width, ids.shape[1],
                    hidden.device))


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
        self.sizes: OrderedDict[int, _Size] = OrderedDict()
        self.captures = 0
        self._pool = None     # one memory pool for every capture: one replays at a time
        self._side = None     # the capture stream

    def __call__(self, hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                 ids: torch.Tensor, weights: torch.Tensor, out: torch.Tensor | None = None,
                 expert_map: torch.Tensor | None = None) -> torch.Tensor:
        tokens = hidden.shape[0]
        if (not hidden.is_cuda or tokens == 0 or torch.cuda.is_current_stream_capturing()):
            return self.layer(hidden, w13, w2, ids, weights, out, expert_map)
        key = (w13.data_ptr(), w2.data_ptr(), tuple(w13.shape), tuple(w2.shape),
               None if expert_map is None else expert_map.data_ptr())
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
        if graph is None:
            graph = size.graphs[key] = self._capture(size, w13, w2, expert_map)
        graph.replay()
        return size.out.clone() if out is None else out.copy_(size.out)

    def _size(self, tokens: int, hidden: torch.Tensor, ids: torch.Tensor,
              weights: torch.Tensor, width: int) -> _Size:
        """The static buffers of ``tokens``, made (or remade, for other dtypes) on first
        use; the least recently used size beyond ``max_sizes`` is dropped."""
        size = self.sizes.get(tokens)
        if size is None or not size.matches(hidden, ids, weights, width):
            size = _Size(torch.empty_like(hidden), torch.empty_like(ids),
                         torch.empty_like(weights),
                         hidden.new_empty(tokens, width))
            self.sizes[tokens] = size
            while len(self.sizes) > self.max_sizes:
                self.sizes.popitem(last=False)
        self.sizes.move_to_end(tokens)
        return size

    def _capture(self, size: _Size, w13: torch.Tensor, w2: torch.Tensor,
                 expert_map: torch.Tensor | None) -> torch.cuda.CUDAGraph:
        """The layer on ``size``'s static tensors, captured on a side stream that waits
        for the engine's work so far (the copies into the static inputs among it)."""
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
            self._side = torch.cuda.Stream(device=size.x.device)
        graph = torch.cuda.CUDAGraph()
        current, side = torch.cuda.current_stream(), self._side
        side.wait_stream(current)
        with torch.cuda.stream(side):
            graph.capture_begin(pool=self._pool, capture_error_mode="thread_local")
            try:
                self.layer(size.x, w13, w2, size.ids, size.weights, size.out, expert_map)
            finally:
                graph.capture_end()
        current.wait_stream(side)
        self.captures += 1
        return graph
