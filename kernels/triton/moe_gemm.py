"""Triton kernels of the fused-MoE layer: routing and one grouped GEMM for both projections.

Integer arguments that follow T (slot and CTA counts) are not specialised on
(``do_not_specialize``): each kernel compiles once per configuration, whatever T, so the
warm-up at a few sizes compiles everything a later CUDA-graph capture of any size runs.

No host sync anywhere: the routing kernel counts the histogram and permutes token-expert
rows on the GPU, and every GEMM CTA derives its tile schedule from the device-side counts
itself (a cumulative sum over E in registers), so the launch grid depends only on T and
the configuration, never on the histogram. That keeps every call capturable in a CUDA
graph and lets the sync-free dispatcher choose among configurations on the device.

Layouts follow vLLM's fused_moe: hidden states [T, K]; topk_ids / topk_weights [T, k];
stacked expert weights [E, N, K] (w13: N = 2I, gate rows then up rows; w2: N = hidden).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit(do_not_specialize=['num_slots'])
def moe_route_kernel(
    topk_ids_ptr, counts_ptr, cursor_ptr, sorted_slots_ptr, num_slots,
    E: tl.constexpr, E_POW2: tl.constexpr, BLOCK: tl.constexpr,
):
    """One CTA: histogram of expert ids, exclusive offsets, then a counting-sort scatter.

    ``sorted_slots[p]`` is the flat (token * top_k + j) slot routed to position ``p``;
    positions of expert ``e`` are ``offsets[e] .. offsets[e] + counts[e]``. Order within
    an expert is whatever the atomics give: it changes no result, each row is independent.
    """
    experts = tl.arange(0, E_POW2)
    counts = _count_experts(topk_ids_ptr, num_slots, experts, E_POW2, BLOCK)
    tl.store(counts_ptr + experts, counts, mask=experts < E)
    tl.store(cursor_ptr + experts, tl.cumsum(counts, 0) - counts, mask=experts < E)
    tl.debug_barrier()
    for start in range(0, num_slots, BLOCK):
        _scatter_slots(topk_ids_ptr, cursor_ptr, sorted_slots_ptr,
                       start + tl.arange(0, BLOCK), num_slots)


@triton.jit(do_not_specialize=['num_slots'])
def moe_route_count_kernel(topk_ids_ptr, partial_ptr, num_slots, E_POW2: tl.constexpr,
                           BLOCK: tl.constexpr):
    """Routing of many slots, step 1 of 2: CTA ``c`` writes the histogram of slots
    ``c * BLOCK ..+ BLOCK`` to ``partial[c]`` (no atomics, nothing to zero first)."""
    cta = tl.program_id(0)
    first = cta * BLOCK
    experts = tl.arange(0, E_POW2)
    counts = _count_experts(topk_ids_ptr + first, tl.minimum(num_slots - first, BLOCK),
                            experts, E_POW2, BLOCK)
    tl.store(partial_ptr + cta * E_POW2 + experts, counts)


@triton.jit(do_not_specialize=['num_slots', 'num_ctas'])
def moe_route_scatter_kernel(
    topk_ids_ptr, partial_ptr, counts_ptr, cursor_ptr, sorted_slots_ptr, num_slots, num_ctas,
    E: tl.constexpr, E_POW2: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr,
):
    """Routing of many slots, step 2 of 2: every CTA sums the partial histograms (the
    whole one, and the part of the CTAs before it), so its slots of expert ``e`` go to
    ``offsets[e] + (rows of e before this CTA) + ...``; CTA 0 writes the counts. The
    same sort as ``moe_route_kernel``, its two loops spread over ``num_ctas`` CTAs."""
    cta = tl.program_id(0)
    experts = tl.arange(0, E_POW2)
    counts = tl.zeros([E_POW2], dtype=tl.int32)
    before = tl.zeros([E_POW2], dtype=tl.int32)
    for c0 in range(0, num_ctas, ROWS):  # ROWS partial rows per load, not one
        rows = c0 + tl.arange(0, ROWS)
        part = tl.load(partial_ptr + rows[:, None] * E_POW2 + experts[None, :],
                       mask=rows[:, None] < num_ctas, other=0)
        counts += tl.sum(part, 0)
        before += tl.sum(tl.where(rows[:, None] < cta, part, 0), 0)
    if cta == 0:
        tl.store(counts_ptr + experts, counts, mask=experts < E)
    cursor = cursor_ptr + cta * E_POW2
    tl.store(cursor + experts, tl.cumsum(counts, 0) - counts + before)
    tl.debug_barrier()
    _scatter_slots(topk_ids_ptr, cursor, sorted_slots_ptr, cta * BLOCK + tl.arange(0, BLOCK),
                   num_slots)


@triton.jit
def moe_top_k_sum_kernel(rows_ptr, out_ptr, width, out_stride, row_of_ptr, weights_ptr,
                         valid_rows_ptr, TOP_K: tl.constexpr, BLOCK: tl.constexpr,
                         GATHER: tl.constexpr):
    """The finalize stage: ``out[t, c] = sum_j rows[t * TOP_K + j, c]``, summed in float32
    and rounded once to ``out``'s dtype (rows of ``out`` ``out_stride`` apart), one CTA per
    token and ``BLOCK`` columns. torch.sum's reduction over the middle axis of [T, k, K]
    ran at about half vLLM's ``moe_sum`` in a DeepSeek-V2-Lite prefill (28 vs 14 us a call).

    ``GATHER``: the rows are expert-sorted and unweighted (a GEMM that cannot scatter,
    ``torch._grouped_mm``): slot ``t * TOP_K + j`` sits at row ``row_of[slot]`` and adds
    ``weights[slot]`` times it; rows at or past ``*valid_rows_ptr`` (other ranks' slots
    under expert parallelism, never written) add nothing. One pass replaces the weighting,
    the scatter back to slot order and the sum."""
    token = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < width
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    if GATHER:
        valid_rows = tl.load(valid_rows_ptr)
        for j in tl.static_range(TOP_K):
            row = tl.load(row_of_ptr + token * TOP_K + j)
            weight = tl.load(weights_ptr + token * TOP_K + j)
            local = row < valid_rows
            vals = tl.load(rows_ptr + row.to(tl.int64) * width + cols, mask=mask & local,
                           other=0.0)
            acc += tl.where(local, weight, 0.0) * vals.to(tl.float32)
    else:
        base = rows_ptr + token.to(tl.int64) * TOP_K * width
        for j in tl.static_range(TOP_K):
            acc += tl.load(base + j * width + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + token.to(tl.int64) * out_stride + cols,
             acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=['num_slots'])
def moe_gather_rows_kernel(hidden_ptr, hidden_stride, sorted_slots_ptr, rows_ptr, row_of_ptr,
                           num_slots, width, TOP_K: tl.constexpr, BLOCK_R: tl.constexpr,
                           BLOCK_C: tl.constexpr):
    """``rows[p] = hidden[sorted_slots[p] // TOP_K]``: the token rows in expert order, for
    a GEMM that reads its A operand contiguous (``torch._grouped_mm``). The first column
    block also writes the inverse permutation ``row_of[sorted_slots[p]] = p``, which the
    gathering top-k sum reads; one launch for what took four torch ops."""
    pos = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    live = pos < num_slots
    slot = tl.load(sorted_slots_ptr + pos, mask=live, other=0)
    if tl.program_id(1) == 0:
        tl.store(row_of_ptr + slot, pos, mask=live)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = live[:, None] & (cols < width)[None, :]
    src = hidden_ptr + (slot // TOP_K).to(tl.int64)[:, None] * hidden_stride + cols[None, :]
    dst = rows_ptr + pos.to(tl.int64)[:, None] * width + cols[None, :]
    tl.store(dst, tl.load(src, mask=mask), mask=mask)


@triton.jit(do_not_specialize=['num_rows'])
def moe_silu_mul_kernel(gate_up_ptr, out_ptr, num_rows, inter, BLOCK_R: tl.constexpr,
                        BLOCK_C: tl.constexpr):
    """``out[r] = SiLU(gate_up[r, :inter]) * gate_up[r, inter:]`` in float32, rounded once:
    one pass over w13's output where torch's silu and mul made three."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (rows < num_rows)[:, None] & (cols < inter)[None, :]
    src = gate_up_ptr + rows.to(tl.int64)[:, None] * (2 * inter) + cols[None, :]
    gate = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(src + inter, mask=mask, other=0.0).to(tl.float32)
    act = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * inter + cols[None, :],
             act.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _scatter_slots(topk_ids_ptr, cursor_ptr, sorted_slots_ptr, offs, num_slots):
    """Counting-sort scatter of the slots ``offs``: each claims the next position of its
    expert from ``cursor`` (atomics) and writes its slot index there."""
    valid = offs < num_slots
    ids = tl.load(topk_ids_ptr + offs, mask=valid, other=0)
    pos = tl.atomic_add(cursor_ptr + ids, 1, mask=valid)
    tl.store(sorted_slots_ptr + pos, offs, mask=valid)


@triton.jit
def _count_experts(topk_ids_ptr, num_slots, experts, E_POW2: tl.constexpr,
                   BLOCK: tl.constexpr):
    """The expert histogram of ``num_slots`` flat top-k ids, in registers."""
    counts = tl.zeros([E_POW2], dtype=tl.int32)
    for start in range(0, num_slots, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        # Masked lanes count as expert 0 (a histogram bin must be in range); undone below.
        ids = tl.load(topk_ids_ptr + offs, mask=offs < num_slots, other=0)
        counts += tl.histogram(ids, E_POW2)
    padding = tl.cdiv(num_slots, BLOCK) * BLOCK - num_slots
    return counts - tl.where(experts == 0, padding, 0)


@triton.jit
def _expert_slots(topk_ids_ptr, num_slots, expert, first, BLOCK_M: tl.constexpr,
                  BLOCK: tl.constexpr):
    """Slots of occurrences ``first .. first + BLOCK_M`` of ``expert`` among the flat ids,
    in slot order (0 past its last occurrence): one row tile's sorted slots, found
    without a routing pass."""
    want = first + tl.arange(0, BLOCK_M)
    slots = tl.zeros([BLOCK_M], dtype=tl.int32)
    seen = 0
    for start in range(0, num_slots, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        ids = tl.load(topk_ids_ptr + offs, mask=offs < num_slots, other=-1)
        hit = (ids == expert).to(tl.int32)
        rank = seen + tl.cumsum(hit, 0) - hit  # this occurrence's index among the expert's
        match = (rank[None, :] == want[:, None]) & (hit[None, :] == 1)
        slots += tl.sum(tl.where(match, offs[None, :], 0), 1)
        seen += tl.sum(hit, 0)
    return slots


@triton.jit
def _schedule(counts, BLOCK_M: tl.constexpr):
    """Row offsets and inclusive row-tile cumsum of per-expert counts, in registers."""
    return tl.cumsum(counts, 0) - counts, tl.cumsum((counts + BLOCK_M - 1) // BLOCK_M, 0)


@triton.jit
def _tile_schedule(counts_ptr, BLOCK_M: tl.constexpr, E: tl.constexpr, E_POW2: tl.constexpr):
    """Per-expert counts (loaded), row offsets and inclusive row-tile cumsum."""
    experts = tl.arange(0, E_POW2)
    counts = tl.load(counts_ptr + experts, mask=experts < E, other=0)
    row_offsets, tiles_cum = _schedule(counts, BLOCK_M)
    return experts, counts, row_offsets, tiles_cum


@triton.jit
def _grid_tiles(counts_ptr, N, E: tl.constexpr, E_POW2: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SILU_MUL: tl.constexpr):
    """The schedule plus the grid's shape: row tiles and column tiles of this call."""
    experts, counts, row_offsets, tiles_cum = _tile_schedule(counts_ptr, BLOCK_M, E, E_POW2)
    n_tiles = _col_tiles(N, BLOCK_N, SILU_MUL)
    return experts, counts, row_offsets, tiles_cum, tl.max(tiles_cum, 0), n_tiles


@triton.jit
def _col_tiles(N, BLOCK_N: tl.constexpr, SILU_MUL: tl.constexpr):
    """Output column tiles: w13's tile holds BLOCK_N//2 gate and as many up columns."""
    OUT_N: tl.constexpr = BLOCK_N // 2 if SILU_MUL else BLOCK_N
    return tl.cdiv(N // 2 if SILU_MUL else N, OUT_N)


@triton.jit
def _pick(vec, experts, e):
    """vec[e] for a register vector and a run-time scalar index."""
    return tl.sum(tl.where(experts == e, vec, 0), 0)


@triton.jit
def _raster(tile, num_m_tiles, n_tiles, GROUP_M: tl.constexpr):
    """(row tile, column tile) of a flat tile index: a grouped raster, so GROUP_M row
    tiles share each weight tile while it is in L2."""
    width = GROUP_M * n_tiles
    first_m = (tile // width) * GROUP_M
    group = tl.minimum(num_m_tiles - first_m, GROUP_M)
    return first_m + (tile % width) % group, (tile % width) // group


@triton.jit
def _owner(m_tile, experts, counts, tiles_cum, BLOCK_M: tl.constexpr):
    """The expert owning row tile ``m_tile`` of an inclusive per-expert tile cumsum, its
    row count and the tile's first row within the expert."""
    expert = tl.sum((tiles_cum <= m_tile).to(tl.int32), 0)
    count = _pick(counts, experts, expert)
    first_tile = _pick(tiles_cum, experts, expert) - (count + BLOCK_M - 1) // BLOCK_M
    return expert, count, (m_tile - first_tile) * BLOCK_M


@triton.jit
def _gemm_tile(
    tile, num_m_tiles, n_tiles,
    experts, counts, row_offsets, tiles_cum,
    a_ptr, b_ptr, c_ptr, sorted_slots_ptr, topk_weights_ptr,
    N, K, stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
    TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, GATHER_A: tl.constexpr,
    SCATTER_C: tl.constexpr, SILU_MUL: tl.constexpr, EVEN_K: tl.constexpr,
    a_desc, b_desc, TMA_A: tl.constexpr, TMA_B: tl.constexpr,
):
    m_tile, n_tile = _raster(tile, num_m_tiles, n_tiles, GROUP_M)
    expert, count, first_row = _owner(m_tile, experts, counts, tiles_cum, BLOCK_M)
    _tile_body(expert, count, first_row, _pick(row_offsets, experts, expert), n_tile,
               a_ptr, b_ptr, c_ptr, sorted_slots_ptr, topk_weights_ptr,
               N, K, stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm,
               stride_cn, TOP_K, BLOCK_M, BLOCK_N, BLOCK_K, GATHER_A, SCATTER_C, SILU_MUL,
               EVEN_K, a_desc, b_desc, TMA_A, TMA_B)


@triton.jit
def _tile_body(
    expert, count, first_row, row_offset, n_tile,
    a_ptr, b_ptr, c_ptr, sorted_slots_ptr, topk_weights_ptr,
    N, K, stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
    TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, GATHER_A: tl.constexpr, SCATTER_C: tl.constexpr,
    SILU_MUL: tl.constexpr, EVEN_K: tl.constexpr,
    a_desc, b_desc, TMA_A: tl.constexpr, TMA_B: tl.constexpr,
):
    """One output tile: rows ``first_row ..+ BLOCK_M`` of ``expert`` (``count`` rows,
    starting at ``row_offset`` in expert-sorted order), column tile ``n_tile``.

    ``TMA_B``: the weight tiles come through the tensor descriptor ``b_desc`` (the
    weights as [E * N, K], boxes of [OUT_N, BLOCK_K]) instead of pointer loads;
    ``TMA_A``: so do the activation tiles (``a_desc``: [rows, K], boxes of [BLOCK_M,
    BLOCK_K]), for w2 only, whose rows are contiguous in expert-sorted order. Box rows
    past this expert's (the next expert's rows or columns) are computed and never
    stored; past the tensor's end TMA reads zeros."""
    local = first_row + tl.arange(0, BLOCK_M)
    row_ok = local < count
    pos = row_offset + local  # row in expert-sorted order
    if GATHER_A or SCATTER_C:
        slot = tl.load(sorted_slots_ptr + pos, mask=row_ok, other=0)
    a_rows = slot // TOP_K if GATHER_A else pos
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + a_rows[:, None] * stride_am + offs_k[None, :] * stride_ak
    # w13 computes BLOCK_N//2 gate and the matching up columns: the fused SiLU*mul needs both.
    OUT_N: tl.constexpr = BLOCK_N // 2 if SILU_MUL else BLOCK_N
    offs_n = n_tile * OUT_N + tl.arange(0, OUT_N)
    out_cols = N // 2 if SILU_MUL else N
    n_ok = offs_n < out_cols
    b_base = b_ptr + expert.to(tl.int64) * stride_be + offs_k[:, None] * stride_bk
    b_ptrs = b_base + offs_n[None, :] * stride_bn
    acc = tl.zeros([BLOCK_M, OUT_N], dtype=tl.float32)
    if SILU_MUL:
        up_ptrs = b_ptrs + out_cols * stride_bn
        acc_up = tl.zeros([BLOCK_M, OUT_N], dtype=tl.float32)
    b_row = expert * N + n_tile * OUT_N  # the gate (or only) box's first weight row
    for k0 in range(0, K, BLOCK_K):
        if TMA_A:
            a = a_desc.load([row_offset + first_row, k0])
        elif EVEN_K:
            a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
        else:
            a = tl.load(a_ptrs, mask=row_ok[:, None] & (offs_k < K - k0)[None, :], other=0.0)
        if TMA_B:
            b = b_desc.load([b_row, k0]).T
        elif EVEN_K:
            b = tl.load(b_ptrs, mask=n_ok[None, :], other=0.0)
        else:
            b = tl.load(b_ptrs, mask=(offs_k < K - k0)[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc)
        if SILU_MUL:
            if TMA_B:
                u = b_desc.load([b_row + out_cols, k0]).T
            elif EVEN_K:
                u = tl.load(up_ptrs, mask=n_ok[None, :], other=0.0)
            else:
                u = tl.load(up_ptrs, mask=(offs_k < K - k0)[:, None] & n_ok[None, :],
                            other=0.0)
            acc_up = tl.dot(a, u, acc_up)
            up_ptrs += BLOCK_K * stride_bk
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    if SILU_MUL:
        acc = acc * tl.sigmoid(acc) * acc_up
    if SCATTER_C:
        acc = acc * tl.load(topk_weights_ptr + slot, mask=row_ok, other=0.0)[:, None]
        c_rows = slot
    else:
        c_rows = pos
    c_ptrs = c_ptr + c_rows[:, None].to(tl.int64) * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


@triton.jit
def moe_gemm_kernel(
    a_ptr, b_ptr, c_ptr, counts_ptr, sorted_slots_ptr, topk_weights_ptr,
    N, K, stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
    E: tl.constexpr, E_POW2: tl.constexpr, TOP_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, PERSISTENT: tl.constexpr,
    GATHER_A: tl.constexpr, SCATTER_C: tl.constexpr, SILU_MUL: tl.constexpr,
    EVEN_K: tl.constexpr, a_desc=None, b_desc=None, TMA_A: tl.constexpr = False,
    TMA_B: tl.constexpr = False,
):
    """Grouped GEMM over expert-sorted rows: C[rows of e] = A[rows of e] @ W[e]^T.

    One-tile-per-CTA (grid = an upper bound on tiles from T; surplus CTAs exit) or
    persistent (grid <= one wave; CTAs stride over tiles). ``TMA_A``/``TMA_B``: operand
    tiles through tensor descriptors (``_tile_body``).
    """
    if PERSISTENT:
        _persistent_tiles(a_ptr, b_ptr, c_ptr, counts_ptr, sorted_slots_ptr, topk_weights_ptr,
                          N, K, stride_am, stride_ak, stride_be, stride_bn, stride_bk,
                          stride_cm, stride_cn, E, E_POW2, TOP_K, BLOCK_M, BLOCK_N, BLOCK_K,
                          GROUP_M, GATHER_A, SCATTER_C, SILU_MUL, EVEN_K,
                          a_desc, b_desc, TMA_A, TMA_B)
    else:
        experts, counts, row_offsets, tiles_cum, num_m_tiles, n_tiles = _grid_tiles(
            counts_ptr, N, E, E_POW2, BLOCK_M, BLOCK_N, SILU_MUL)
        tile = tl.program_id(0)
        if tile < num_m_tiles * n_tiles:
            _gemm_tile(tile, num_m_tiles, n_tiles, experts, counts, row_offsets, tiles_cum,
                       a_ptr, b_ptr, c_ptr, sorted_slots_ptr, topk_weights_ptr,
                       N, K, stride_am, stride_ak, stride_be, stride_bn, stride_bk,
                       stride_cm, stride_cn, TOP_K, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M,
                       GATHER_A, SCATTER_C, SILU_MUL, EVEN_K, a_desc, b_desc, TMA_A, TMA_B)


@triton.jit(do_not_specialize=['num_slots'])
def moe_gemm_w13_routed_kernel(
    a_ptr, b_ptr, c_ptr, topk_ids_ptr, num_slots, counts_ptr, sorted_slots_ptr,
    topk_weights_ptr,
    N, K, stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
    E: tl.constexpr, E_POW2: tl.constexpr, TOP_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, SLOT_BLOCK: tl.constexpr, EVEN_K: tl.constexpr,
):
    """``moe_gemm_kernel``'s w13 (gather, SiLU*mul) with the routing stage fused in, for
    calls of few slots: every CTA counts the flat top-k ids itself and finds its row
    tile's slots (in slot order), so no routing kernel runs before it. It leaves the
    routing it used behind for w2 (``moe_gemm_kernel`` unchanged): CTA 0 writes the
    counts, every CTA its rows' sorted slots (the CTAs of one row tile write the same
    values). One tile per CTA; the grid depends only on T and the configuration."""
    experts = tl.arange(0, E_POW2)
    counts = _count_experts(topk_ids_ptr, num_slots, experts, E_POW2, SLOT_BLOCK)
    tile = tl.program_id(0)
    if tile == 0:
        tl.store(counts_ptr + experts, counts, mask=experts < E)
    row_offsets, tiles_cum = _schedule(counts, BLOCK_M)
    num_m_tiles = tl.max(tiles_cum, 0)
    n_tiles = _col_tiles(N, BLOCK_N, True)
    if tile < num_m_tiles * n_tiles:
        m_tile, n_tile = _raster(tile, num_m_tiles, n_tiles, GROUP_M)
        expert, count, first_row = _owner(m_tile, experts, counts, tiles_cum, BLOCK_M)
        row_offset = _pick(row_offsets, experts, expert)
        local = first_row + tl.arange(0, BLOCK_M)
        slots = _expert_slots(topk_ids_ptr, num_slots, expert, first_row, BLOCK_M, SLOT_BLOCK)
        tl.store(sorted_slots_ptr + row_offset + local, slots, mask=local < count)
        tl.debug_barrier()  # the tile body reads the slots back: visible within the CTA
        _tile_body(expert, count, first_row, row_offset, n_tile,
                   a_ptr, b_ptr, c_ptr, sorted_slots_ptr, topk_weights_ptr,
                   N, K, stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm,
                   stride_cn, TOP_K, BLOCK_M, BLOCK_N, BLOCK_K, True, False, True, EVEN_K,
                   None, None, False, False)


@triton.jit
def _class_tile(
    tile, num_large, num_m_tiles, n_tiles,
    experts, counts, row_offsets, large_cum, small_cum,
    a_ptr, b_ptr, c_ptr, sorted_slots_ptr, topk_weights_ptr,
    N, K, stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
    TOP_K: tl.constexpr, BM_SMALL: tl.constexpr, BM_LARGE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    GATHER_A: tl.constexpr, SCATTER_C: tl.constexpr, SILU_MUL: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    """Tile ``tile`` of the two-class list: row tiles ``0 .. num_large`` are the large
    tiles of the hot experts (first: the longest work starts first), then the small ones."""
    m_tile, n_tile = _raster(tile, num_m_tiles, n_tiles, GROUP_M)
    if m_tile < num_large:
        expert, count, first_row = _owner(m_tile, experts, counts, large_cum, BM_LARGE)
        _tile_body(expert, count, first_row, _pick(row_offsets, experts, expert), n_tile,
                   a_ptr, b_ptr, c_ptr, sorted_slots_ptr, topk_weights_ptr,
                   N, K, stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm,
                   stride_cn, TOP_K, BM_LARGE, BLOCK_N, BLOCK_K, GATHER_A, SCATTER_C,
                   SILU_MUL, EVEN_K, None, None, False, False)
    else:
        expert, count, first_row = _owner(m_tile - num_large, experts, counts, small_cum,
                                          BM_SMALL)
        _tile_body(expert, count, first_row, _pick(row_offsets, experts, expert), n_tile,
                   a_ptr, b_ptr, c_ptr, sorted_slots_ptr, topk_weights_ptr,
                   N, K, stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm,
                   stride_cn, TOP_K, BM_SMALL, BLOCK_N, BLOCK_K, GATHER_A, SCATTER_C,
                   SILU_MUL, EVEN_K, None, None, False, False)


@triton.jit
def moe_gemm_tiles_kernel(
    a_ptr, b_ptr, c_ptr, counts_ptr, sorted_slots_ptr, topk_weights_ptr,
    N, K, stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
    E: tl.constexpr, E_POW2: tl.constexpr, TOP_K: tl.constexpr,
    SMALL_ROWS: tl.constexpr, BM_SMALL: tl.constexpr, BM_LARGE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, PERSISTENT: tl.constexpr,
    GATHER_A: tl.constexpr, SCATTER_C: tl.constexpr, SILU_MUL: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    """``moe_gemm_kernel`` with two row-tile classes in one launch: an expert with at
    most SMALL_ROWS rows is tiled by BM_SMALL rows, the others by BM_LARGE (same
    BLOCK_N, BLOCK_K). Each CTA builds the tile list from the device-side counts in
    registers (per-class tile cumsums over E), so the grid still depends only on T and
    the configuration (surplus CTAs exit) and the launch is CUDA-graph capturable.
    Compiled with both tile bodies: registers and shared memory are the large tile's.
    """
    experts = tl.arange(0, E_POW2)
    counts = tl.load(counts_ptr + experts, mask=experts < E, other=0)
    row_offsets = tl.cumsum(counts, 0) - counts
    small = counts <= SMALL_ROWS
    large_cum = tl.cumsum(tl.where(small, 0, (counts + BM_LARGE - 1) // BM_LARGE), 0)
    small_cum = tl.cumsum(tl.where(small, (counts + BM_SMALL - 1) // BM_SMALL, 0), 0)
    num_large = tl.max(large_cum, 0)
    num_m_tiles = num_large + tl.max(small_cum, 0)
    n_tiles = _col_tiles(N, BLOCK_N, SILU_MUL)
    if PERSISTENT:
        for tile in range(tl.program_id(0), num_m_tiles * n_tiles, tl.num_programs(0)):
            _class_tile(tile, num_large, num_m_tiles, n_tiles, experts, counts, row_offsets,
                        large_cum, small_cum, a_ptr, b_ptr, c_ptr, sorted_slots_ptr,
                        topk_weights_ptr, N, K, stride_am, stride_ak, stride_be, stride_bn,
                        stride_bk, stride_cm, stride_cn, TOP_K, BM_SMALL, BM_LARGE, BLOCK_N,
                        BLOCK_K, GROUP_M, GATHER_A, SCATTER_C, SILU_MUL, EVEN_K)
    else:
        tile = tl.program_id(0)
        if tile < num_m_tiles * n_tiles:
            _class_tile(tile, num_large, num_m_tiles, n_tiles, experts, counts, row_offsets,
                        large_cum, small_cum, a_ptr, b_ptr, c_ptr, sorted_slots_ptr,
                        topk_weights_ptr, N, K, stride_am, stride_ak, stride_be, stride_bn,
                        stride_bk, stride_cm, stride_cn, TOP_K, BM_SMALL, BM_LARGE, BLOCK_N,
                        BLOCK_K, GROUP_M, GATHER_A, SCATTER_C, SILU_MUL, EVEN_K)


@triton.jit
def _branch_time(counts, active, rows, slots, coef_ptr, b: tl.constexpr, out_cols,
                 BLOCK_M: tl.constexpr, OUT_N: tl.constexpr, NUM_BASES: tl.constexpr,
                 B_ONE: tl.constexpr, B_ACTIVE: tl.constexpr, B_TILES: tl.constexpr,
                 B_WAVES: tl.constexpr, B_ROWS: tl.constexpr, B_PADDED: tl.constexpr):
    """The wave cost model of branch ``b``: ``sum_basis coef[b, basis] * basis``, the
    bases of ``ramp.geometry.BASES`` (their columns ``B_*`` and the coefficients come
    from ``GeometryPlan.fold``, the host dispatcher's folding)."""
    row_tiles = tl.sum((counts + BLOCK_M - 1) // BLOCK_M, 0)
    tiles = row_tiles * tl.cdiv(out_cols, OUT_N)
    waves = tl.cdiv(tiles, slots)
    p = coef_ptr + NUM_BASES * b
    return (tl.load(p + B_ONE) + tl.load(p + B_ACTIVE) * active.to(tl.float32)
            + tl.load(p + B_TILES) * tiles.to(tl.float32)
            + tl.load(p + B_WAVES) * waves.to(tl.float32)
            + tl.load(p + B_ROWS) * rows.to(tl.float32)
            + tl.load(p + B_PADDED) * (row_tiles * BLOCK_M).to(tl.float32))


@triton.jit
def _persistent_tiles(
    a_ptr, b_ptr, c_ptr, counts_ptr, sorted_slots_ptr, topk_weights_ptr,
    N, K, stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
    E: tl.constexpr, E_POW2: tl.constexpr, TOP_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, GATHER_A: tl.constexpr, SCATTER_C: tl.constexpr,
    SILU_MUL: tl.constexpr, EVEN_K: tl.constexpr,
    a_desc, b_desc, TMA_A: tl.constexpr, TMA_B: tl.constexpr,
):
    experts, counts, row_offsets, tiles_cum, num_m_tiles, n_tiles = _grid_tiles(
        counts_ptr, N, E, E_POW2, BLOCK_M, BLOCK_N, SILU_MUL)
    for tile in range(tl.program_id(0), num_m_tiles * n_tiles, tl.num_programs(0)):
        _gemm_tile(tile, num_m_tiles, n_tiles, experts, counts, row_offsets, tiles_cum,
                   a_ptr, b_ptr, c_ptr, sorted_slots_ptr, topk_weights_ptr,
                   N, K, stride_am, stride_ak, stride_be, stride_bn, stride_bk,
                   stride_cm, stride_cn, TOP_K, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M,
                   GATHER_A, SCATTER_C, SILU_MUL, EVEN_K, a_desc, b_desc, TMA_A, TMA_B)


@triton.jit
def moe_gemm_poly_kernel(
    a_ptr, b_ptr, c_ptr, counts_ptr, sorted_slots_ptr, topk_weights_ptr,
    params_ptr, choice_ptr, force,
    N, K, stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
    E: tl.constexpr, E_POW2: tl.constexpr, TOP_K: tl.constexpr, NUM_BRANCHES: tl.constexpr,
    BM0: tl.constexpr, BN0: tl.constexpr, BK0: tl.constexpr,
    BM1: tl.constexpr, BN1: tl.constexpr, BK1: tl.constexpr,
    BM2: tl.constexpr, BN2: tl.constexpr, BK2: tl.constexpr,
    BM3: tl.constexpr, BN3: tl.constexpr, BK3: tl.constexpr,
    GROUP_M: tl.constexpr, GATHER_A: tl.constexpr, SCATTER_C: tl.constexpr,
    SILU_MUL: tl.constexpr, EVEN_K: tl.constexpr, NUM_BASES: tl.constexpr,
    B_ONE: tl.constexpr, B_ACTIVE: tl.constexpr, B_TILES: tl.constexpr,
    B_WAVES: tl.constexpr, B_ROWS: tl.constexpr, B_PADDED: tl.constexpr,
):
    """Megakernel polymorphism: one persistent launch, up to four tile configurations.

    Every CTA reads the device-side histogram, evaluates the fitted wave cost model of
    each branch (``params``: [NUM_BRANCHES, NUM_BASES] coefficients on the GPU) and runs
    the argmin branch, so the choice follows the live routing with no host sync and no
    relaunch; the launch is CUDA-graph capturable. All CTAs compute the same choice from the same data. ``force``
    >= 0 pins a branch (profiling each branch with the same launch).
    """
    experts = tl.arange(0, E_POW2)
    counts = tl.load(counts_ptr + experts, mask=experts < E, other=0)
    active = tl.sum((counts > 0).to(tl.int32), 0)
    rows = tl.sum(counts, 0)
    slots = tl.num_programs(0)
    out_cols = N // 2 if SILU_MUL else N
    HALF: tl.constexpr = 2 if SILU_MUL else 1
    choice = force
    if force < 0:
        best = _branch_time(counts, active, rows, slots, params_ptr, 0, out_cols, BM0,
                            BN0 // HALF, NUM_BASES, B_ONE, B_ACTIVE, B_TILES, B_WAVES, B_ROWS,
                            B_PADDED)
        choice = 0
        if NUM_BRANCHES > 1:
            t = _branch_time(counts, active, rows, slots, params_ptr, 1, out_cols, BM1,
                             BN1 // HALF, NUM_BASES, B_ONE, B_ACTIVE, B_TILES, B_WAVES, B_ROWS,
                             B_PADDED)
            choice = tl.where(t < best, 1, choice)
            best = tl.minimum(t, best)
        if NUM_BRANCHES > 2:
            t = _branch_time(counts, active, rows, slots, params_ptr, 2, out_cols, BM2,
                             BN2 // HALF, NUM_BASES, B_ONE, B_ACTIVE, B_TILES, B_WAVES, B_ROWS,
                             B_PADDED)
            choice = tl.where(t < best, 2, choice)
            best = tl.minimum(t, best)
        if NUM_BRANCHES > 3:
            t = _branch_time(counts, active, rows, slots, params_ptr, 3, out_cols, BM3,
                             BN3 // HALF, NUM_BASES, B_ONE, B_ACTIVE, B_TILES, B_WAVES, B_ROWS,
                              B_PADDED)
            choice = tl.where(t < best, 3, choice)
    if tl.program_id(0) == 0:
        tl.store(choice_ptr, choice)
    if choice == 0:
        _persistent_tiles(a_ptr, b_ptr, c_ptr, counts_ptr, sorted_slots_ptr, topk_weights_ptr,
                          N, K, stride_am, stride_ak, stride_be, stride_bn, stride_bk,
                          stride_cm, stride_cn, E, E_POW2, TOP_K, BM0, BN0, BK0, GROUP_M,
                          GATHER_A, SCATTER_C, SILU_MUL, EVEN_K, None, None, False, False)
    elif choice == 1:
        _persistent_tiles(a_ptr, b_ptr, c_ptr, counts_ptr, sorted_slots_ptr, topk_weights_ptr,
                          N, K, stride_am, stride_ak, stride_be, stride_bn, stride_bk,
                          stride_cm, stride_cn, E, E_POW2, TOP_K, BM1, BN1, BK1, GROUP_M,
                          GATHER_A, SCATTER_C, SILU_MUL, EVEN_K, None, None, False, False)
    elif choice == 2:
        _persistent_tiles(a_ptr, b_ptr, c_ptr, counts_ptr, sorted_slots_ptr, topk_weights_ptr,
                          N, K, stride_am, stride_ak, stride_be, stride_bn, stride_bk,
                          stride_cm, stride_cn, E, E_POW2, TOP_K, BM2, BN2, BK2, GROUP_M,
                          GATHER_A, SCATTER_C, SILU_MUL, EVEN_K, None, None, False, False)
    else:
        _persistent_tiles(a_ptr, b_ptr, c_ptr, counts_ptr, sorted_slots_ptr, topk_weights_ptr,
                          N, K, stride_am, stride_ak, stride_be, stride_bn, stride_bk,
                          stride_cm, stride_cn, E, E_POW2, TOP_K, BM3, BN3, BK3, GROUP_M,
                          GATHER_A, SCATTER_C, SILU_MUL, EVEN_K, None, None, False, False)
