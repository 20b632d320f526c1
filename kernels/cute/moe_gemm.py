"""Persistent, warp-specialised wgmma grouped GEMM over ragged expert groups (sm90, CuTe DSL).

One kernel serves both MoE GEMMs. Rows arrive sorted by expert (``a`` is [M, K] with the
rows of expert e at ``[row_start(e), row_start(e) + counts[e])``); weights are [E, N, K].
Each CTA's warp 0 turns the device-side ``counts`` into per-expert first-tile and
first-row tables in shared memory (a warp scan); every role then maps a linear tile
index to (expert, row block, column block) by binary search. The grid depends only on
the launch (a persistent wave): routing changes need neither a host sync nor a
recompilation.

Roles inside a CTA (threads ``128 * (1 + consumer warpgroups)``):

* warp 0 (producer) issues TMA loads of the A row block (coordinates shifted to the
  expert's first row; rows past the expert belong to the next one and are never
  stored, rows past M are zero-filled by TMA) and of the expert's B tile into a
  ``stages``-deep mbarrier pipeline;
* one or two consumer warpgroups run wgmma from shared memory and the epilogue: two
  "cooperative" warpgroups each own 64 rows of one 128-row tile; two "pingpong"
  warpgroups take alternate tiles of the CTA, each a whole tile with its own
  accumulators and staging buffer. The producer streams the tiles' operands in order,
  so the second warpgroup's mainloop starts as the first one's ends and runs while the
  first one is in its epilogue.

Thin-expert ("swap") tiles compute the transposed product, out^T = W . A^T: the weight
tile sits on wgmma's M side (64 rows per instruction) and ``block_m`` token rows (16 or
32) on its N side, so a decode call with one or two tokens per expert issues no
64-row MMA and loads no 64-row activation tile. The epilogue transposes through
shared memory, so both tile kinds share the stores below.

The epilogue stages the bf16 accumulator tile in (padded, conflict-free) shared memory,
then every consumer thread stores 16-byte row segments with a row predicate:

* ``silu_mul`` (w13): the tile's B rows are the gate rows ``[n, n + BN/2)`` and the up
  rows ``[N/2 + n, ...)`` loaded by two TMA copies; the store writes SiLU(gate) * up to
  the expert-sorted intermediate;
* ``scatter`` (w2): each row is scaled by its routing weight and written to its
  token-slot row ``slots[row]`` (the top-k sum happens after, as in the Triton family).
"""

from __future__ import annotations

from dataclasses import dataclass

import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
import cutlass.utils as utils
import cutlass.utils.hopper_helpers as sm90_utils
from cutlass.cute.nvgpu import cpasync, warpgroup

from ramp.kernels.cute.configs import EPI_PAD, MAX_EXPERTS, CuteVariant

THREADS_PER_WG = 128
PRODUCER_REGS = 40
CONSUMER_REGS = 232
VEC = 8  # bf16 elements per 16-byte store
EXPERTS_PER_LANE = MAX_EXPERTS // 32


@dataclass(frozen=True)
class Schedule:
    """A CTA's share of the work units (tiles, or cluster tiles): they go round-robin over
    the clusters, so the CTA's j-th unit is ``first + j * step`` while below ``total``,
    and ``find_tile`` maps one to its expert and blocks through the shared tables."""

    tile_start: cute.Tensor  # per expert, its first unit (smem; MAX_EXPERTS: the total)
    row_start: cute.Tensor   # per expert, its first row (smem)
    n_tiles: cutlass.Int32   # column blocks per expert
    k_tiles: cutlass.Int32   # K blocks per unit: the pipeline stages it fills
    rank: cutlass.Int32      # the CTA's rank in its cluster
    first: cutlass.Int32
    step: cutlass.Int32
    total: cutlass.Int32


class MoEGemmSm90:
    """Compile-time shape of one configuration; ``__call__`` is the ``cute.jit`` host entry.

    ``raster``: order of a tile's (row block, column block) inside one expert: ``"m"``
    (row blocks fastest: consecutive CTAs share a weight tile), ``"n"`` (column blocks
    fastest: they share the activation rows), or ``"g<G>"`` (row blocks fastest within
    bands of G, Triton's grouped ordering).
    """

    def __init__(self, block_m: int, block_n: int, stages: int, variant: CuteVariant,
                 silu_mul: bool, cluster_m: int = 1, epi_cols: int = 0) -> None:
        self.block_m, self.block_n, self.block_k = block_m, block_n, 64
        # A cluster of cluster_m CTAs works on cluster_m consecutive row blocks of one
        # expert and one column block: each CTA loads 1/cluster_m of the weight tile and
        # TMA multicasts it to all, so the weights cross L2 once per cluster.
        self.cluster_m = cluster_m
        self.rows_per_unit = block_m * cluster_m
        self.stages = stages
        self.swap_ab = variant.swap_ab
        self.pingpong = variant.pingpong
        self.consumer_wgs = variant.consumer_warpgroups
        # Warpgroups that share one tile (its accumulator, staging buffer, barrier).
        self.tile_wgs = 2 if variant.cooperative else 1
        self.teams = self.consumer_wgs // self.tile_wgs
        self.raster = variant.raster
        self.silu_mul = silu_mul
        self.halves = 2 if silu_mul else 1
        self.out_n = block_n // self.halves
        # Output columns staged per epilogue step (configs.epilogue_cols); 0: all.
        self.epi_cols = epi_cols or self.out_n
        self.threads = THREADS_PER_WG * (1 + self.consumer_wgs)
        self.tile_threads = THREADS_PER_WG * self.tile_wgs

    @cute.jit
    def __call__(self, mA: cute.Tensor, mB: cute.Tensor, mOut: cute.Tensor,
                 mCounts: cute.Tensor, mSlots: cute.Tensor, mWeights: cute.Tensor,
                 num_ctas: cutlass.Int32, stream):
        bm, bn, bk = self.block_m, self.block_n, self.block_k
        ab_dtype = mA.element_type
        a_layout = utils.LayoutEnum.from_tensor(mA)
        b_layout = utils.LayoutEnum.from_tensor(mB)
        if cutlass.const_expr(self.swap_ab):  # weights on M, tokens on N
            tiled_mma = sm90_utils.make_trivial_tiled_mma(
                ab_dtype, ab_dtype, b_layout.sm90_mma_major_mode(),
                a_layout.sm90_mma_major_mode(), cutlass.Float32, (1, 1, 1), tiler_mn=(64, bm))
        else:
            tiled_mma = sm90_utils.make_trivial_tiled_mma(
                ab_dtype, ab_dtype, a_layout.sm90_mma_major_mode(),
                b_layout.sm90_mma_major_mode(), cutlass.Float32, (self.tile_wgs, 1, 1),
                tiler_mn=(64, bn))
        tile_mnk = (bm, bn, bk)
        sa_layout = sm90_utils.make_smem_layout_a(a_layout, tile_mnk, ab_dtype, self.stages)
        sb_layout = sm90_utils.make_smem_layout_b(b_layout, tile_mnk, ab_dtype, self.stages)
        # One TMA box of B is one half (w13) or the whole (w2) column tile.
        sb_box = cute.slice_(sm90_utils.make_smem_layout_b(
            b_layout, (bm, self.out_n, bk), ab_dtype, 1), (None, None, 0))
        tma_a, tma_mA = cpasync.make_tiled_tma_atom(
            cpasync.CopyBulkTensorTileG2SOp(), mA, cute.slice_(sa_layout, (None, None, 0)),
            (bm, bk))
        tma_b, tma_mB = cpasync.make_tiled_tma_atom(
            cpasync.CopyBulkTensorTileG2SMulticastOp() if self.cluster_m > 1
            else cpasync.CopyBulkTensorTileG2SOp(), mB, sb_box, (self.out_n, bk),
            num_multicast=self.cluster_m)
        # The epilogue stages epi_cols output columns at a time (and, for w13, their up
        # columns beside them): (rows, halves * epi_cols) plus padding per row; one
        # buffer per team of warpgroups that works on its own tiles.
        pitch = self.halves * self.epi_cols + EPI_PAD
        sc_layout = cute.make_layout((bm, self.halves * self.epi_cols, self.teams),
                                     stride=(pitch, 1, bm * pitch))

        @cute.struct
        class SharedStorage:
            barriers: cute.struct.MemRange[cutlass.Int64, self.stages * 2]
            turns: cute.struct.MemRange[cutlass.Int64, 2]  # pingpong mainloop order
            tile_start: cute.struct.MemRange[cutlass.Int32, MAX_EXPERTS + 1]
            row_start: cute.struct.MemRange[cutlass.Int32, MAX_EXPERTS + 1]
            sA: cute.struct.Align[cute.struct.MemRange[ab_dtype, cute.cosize(sa_layout)], 1024]
            sB: cute.struct.Align[cute.struct.MemRange[ab_dtype, cute.cosize(sb_layout)], 1024]
            sC: cute.struct.Align[cute.struct.MemRange[ab_dtype, cute.cosize(sc_layout)], 128]

        self.shared_storage = SharedStorage
        self.kernel(tma_a, tma_mA, tma_b, tma_mB, mOut, mCounts, mSlots, mWeights, tiled_mma,
                    sa_layout, sb_layout, sc_layout).launch(
            grid=[num_ctas, 1, 1], block=[self.threads, 1, 1], cluster=(self.cluster_m, 1, 1),
            min_blocks_per_mp=1, stream=stream)

    @cute.jit
    def build_tables(self, mCounts: cute.Tensor, tile_start: cute.Tensor,
                     row_start: cute.Tensor, n_tiles: cutlass.Int32):
        """Warp 0: per expert, its first tile and first row (exclusive prefix sums of
        tiles and rows; entry MAX_EXPERTS holds the totals), into shared memory.

        Each lane owns EXPERTS_PER_LANE consecutive experts (independent loads), then
        a 5-step shuffle scan: no thread walks the experts one dependent load at a time.
        """
        lane = cute.arch.lane_idx()
        counts = cute.make_rmem_tensor((EXPERTS_PER_LANE,), cutlass.Int32)
        tiles = cutlass.Int32(0)
        rows = cutlass.Int32(0)
        for j in cutlass.range_constexpr(EXPERTS_PER_LANE):
            e = lane * EXPERTS_PER_LANE + j
            counts[j] = cutlass.Int32(0)
            if e < cute.size(mCounts):
                counts[j] = mCounts[e]
            rows = rows + counts[j]
            tiles = tiles + (counts[j] + self.rows_per_unit - 1) // self.rows_per_unit * n_tiles
        tiles_incl, rows_incl = tiles, rows
        for step in cutlass.range_constexpr(5):
            # shfl.up clamps at lane 0 (c = 0), not at the idx/down default of 31.
            up_tiles = cute.arch.shuffle_sync_up(tiles_incl, 1 << step, mask_and_clamp=0)
            up_rows = cute.arch.shuffle_sync_up(rows_incl, 1 << step, mask_and_clamp=0)
            if lane >= (1 << step):
                tiles_incl = tiles_incl + up_tiles
                rows_incl = rows_incl + up_rows
        tile, row = tiles_incl - tiles, rows_incl - rows
        for j in cutlass.range_constexpr(EXPERTS_PER_LANE):
            e = lane * EXPERTS_PER_LANE + j
            tile_start[e] = tile
            row_start[e] = row
            tile = tile + (counts[j] + self.rows_per_unit - 1) // self.rows_per_unit * n_tiles
            row = row + counts[j]
        if lane == 31:
            tile_start[MAX_EXPERTS] = tile
            row_start[MAX_EXPERTS] = row

    @cute.jit
    def find_tile(self, t: cutlass.Int32, tile_start: cute.Tensor, row_start: cute.Tensor,
                  n_tiles: cutlass.Int32, rank: cutlass.Int32):
        """Work unit ``t`` -> (expert, its first row, its rows, this CTA's row block,
        column block): a binary search for the last expert whose first tile is <= t;
        CTA ``rank`` of a cluster takes the unit's ``rank``-th row block."""
        lo = cutlass.Int32(0)
        hi = cutlass.Int32(MAX_EXPERTS)
        for _ in cutlass.range_constexpr(MAX_EXPERTS.bit_length() - 1):
            mid = (lo + hi) // 2
            if tile_start[mid] <= t:
                lo = mid
            else:
                hi = mid
        first_row = row_start[lo]
        count = row_start[lo + 1] - first_row
        m_unit, n_blk = self.tile_coords(t - tile_start[lo], count, n_tiles)
        return lo, first_row, count, m_unit * self.cluster_m + rank, n_blk

    @cute.jit
    def tile_coords(self, local: cutlass.Int32, count: cutlass.Int32, n_tiles: cutlass.Int32):
        """(row unit, column block) of the expert's ``local``-th tile in raster order
        (a row unit is ``cluster_m`` row blocks, one per CTA of the cluster)."""
        m_tiles = (count + self.rows_per_unit - 1) // self.rows_per_unit
        m_blk, n_blk = local % m_tiles, local // m_tiles
        if cutlass.const_expr(self.raster == "n"):
            m_blk, n_blk = local // n_tiles, local % n_tiles
        if cutlass.const_expr(self.raster.startswith("g")):
            group = int(self.raster[1:])
            band = local // (group * n_tiles)
            first = band * group
            height = m_tiles - first
            if height > group:
                height = cutlass.Int32(group)
            rest = local - band * group * n_tiles
            m_blk, n_blk = first + rest % height, rest // height
        return m_blk, n_blk

    @cute.kernel
    def kernel(self, tma_a: cute.CopyAtom, mA: cute.Tensor, tma_b: cute.CopyAtom,
               mB: cute.Tensor, mOut: cute.Tensor, mCounts: cute.Tensor, mSlots: cute.Tensor,
               mWeights: cute.Tensor, tiled_mma: cute.TiledMma, sa_layout: cute.ComposedLayout,
               sb_layout: cute.ComposedLayout, sc_layout: cute.Layout):
        """Shared state every role needs (pipeline, tile tables), then the roles: warp 0
        produces, the consumer warpgroups consume (warps 1-3 only help set up and give
        their registers back)."""
        tidx, _, _ = cute.arch.thread_idx()
        warp = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        cta, _, _ = cute.arch.block_idx()
        grid, _, _ = cute.arch.grid_dim()
        rank = cutlass.Int32(0)
        if cutlass.const_expr(self.cluster_m > 1):
            rank = cute.arch.make_warp_uniform(cute.arch.block_idx_in_cluster())
        if warp == 0:
            cpasync.prefetch_descriptor(tma_a)
            cpasync.prefetch_descriptor(tma_b)

        storage = cutlass.utils.SmemAllocator().allocate(self.shared_storage)
        # A, B and the output share a dtype (mA holds TMA coordinates).
        pipe = self.make_pipeline(storage, sa_layout, sb_layout, mOut.element_type)
        sA = storage.sA.get_tensor(sa_layout.outer, swizzle=sa_layout.inner)
        sB = storage.sB.get_tensor(sb_layout.outer, swizzle=sb_layout.inner)
        sC_teams = storage.sC.get_tensor(sc_layout)
        n_tiles = cute.size(mOut, mode=[1]) // self.out_n
        k_tiles = cute.size(mA, mode=[1]) // self.block_k
        tBsB, tBgB = self.partition_b(tma_b, mB, sB, rank)
        turns = storage.turns.data_ptr()  # pingpong mainloop order
        tile_start, row_start = self.share_tables(storage, turns, mCounts, n_tiles, warp, tidx)
        sched = Schedule(tile_start, row_start, n_tiles, k_tiles, rank, cta // self.cluster_m,
                         grid // self.cluster_m, tile_start[MAX_EXPERTS])

        if warp < 4:
            cute.arch.warpgroup_reg_dealloc(PRODUCER_REGS)
        if warp == 0:
            self.produce(pipe, tma_a, mA, sA, tma_b, tBsB, tBgB, sched)
        if warp >= 4:
            cute.arch.warpgroup_reg_alloc(CONSUMER_REGS)
            self.consume(pipe, tiled_mma, sA, sB, sC_teams, mOut, mSlots, mWeights, turns,
                         tidx, warp, sched)

    @cute.jit
    def make_pipeline(self, storage, sa_layout: cute.ComposedLayout,
                      sb_layout: cute.ComposedLayout,
                      dtype: type[cutlass.Numeric]) -> pipeline.PipelineTmaAsync:
        """The ``stages``-deep TMA -> wgmma mbarrier pipeline; a stage's transaction is one
        A tile and one B tile. Its cluster-wide init is deferred: this arrives, and
        ``share_tables`` waits after building the tile tables, which run in between."""
        tx_bytes = (cute.size_in_bytes(dtype, cute.slice_(sa_layout, (None, None, 0)))
                    + cute.size_in_bytes(dtype, cute.slice_(sb_layout, (None, None, 0))))
        pipe = pipeline.PipelineTmaAsync.create(
            barrier_storage=storage.barriers.data_ptr(), num_stages=self.stages,
            producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread),
            # A stage is free once every consumer warp of its tile in every CTA it was
            # multicast to is done.
            consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread,
                                                     self.tile_wgs * 4 * self.cluster_m),
            tx_count=tx_bytes, cta_layout_vmnk=cute.make_layout((1, self.cluster_m, 1, 1)),
            defer_sync=True)
        pipeline.pipeline_init_arrive(cluster_shape_mn=(self.cluster_m, 1), is_relaxed=True)
        return pipe

    @cute.jit
    def partition_b(self, tma_b: cute.CopyAtom, mB: cute.Tensor, sB: cute.Tensor,
                    rank: cutlass.Int32):
        """The weight tensor and its smem stages as TMA boxes of (out_n, bk); with a
        cluster, CTA ``rank`` loads its 1/cluster_m slice of each box for all."""
        # Boxes: (out_n, bk, column box, k block, expert); the up half of w13 sits
        # n_tiles boxes after its gate half.
        gB = cute.local_tile(mB, (self.out_n, self.block_k), (None, None, None))
        sB_boxes = cute.group_modes(cute.flat_divide(sB, (self.out_n, self.block_k)), 0, 2)
        return cpasync.tma_partition(tma_b, rank, cute.make_layout(self.cluster_m),
                                     sB_boxes, cute.group_modes(gB, 0, 2))

    @cute.jit
    def share_tables(self, storage, turns: cute.Pointer, mCounts: cute.Tensor,
                     n_tiles: cutlass.Int32, warp: cutlass.Int32, tidx: cutlass.Int32):
        """Warp 0 builds the tile tables and warp 1 the pingpong turn barriers; one CTA
        barrier (and the pipeline's cluster wait) publishes both before any role starts."""
        sTileStart = storage.tile_start.get_tensor(cute.make_layout(MAX_EXPERTS + 1))
        sRowStart = storage.row_start.get_tensor(cute.make_layout(MAX_EXPERTS + 1))
        if warp == 0:
            self.build_tables(mCounts, sTileStart, sRowStart, n_tiles)
        if cutlass.const_expr(self.pingpong):  # noqa: SIM102 (compile-time, then runtime)
            if tidx == 32:  # warp 1: each turn barrier completes when a whole team arrives
                for w in cutlass.range_constexpr(2):
                    cute.arch.mbarrier_init(turns + w, self.tile_threads)
                cute.arch.mbarrier_init_fence()
        cute.arch.sync_threads()  # the tables and barriers, for every role
        pipeline.pipeline_init_wait(cluster_shape_mn=(self.cluster_m, 1))
        return sTileStart, sRowStart

    @cute.jit
    def produce(self, pipe: pipeline.PipelineTmaAsync, tma_a: cute.CopyAtom, mA: cute.Tensor,
                sA: cute.Tensor, tma_b: cute.CopyAtom, tBsB: cute.Tensor, tBgB: cute.Tensor,
                sched: Schedule):
        """Warp 0: for each of the CTA's units in order, TMA its A row block (shifted to
        the expert's first row) and the expert's B boxes into the next free stage."""
        bm, bk = self.block_m, self.block_k
        mcast = cutlass.Int16((1 << self.cluster_m) - 1)  # every CTA of the cluster
        state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, self.stages)
        t = sched.first
        while t < sched.total:
            e, first_row, _, m_blk, n_blk = self.find_tile(
                t, sched.tile_start, sched.row_start, sched.n_tiles, sched.rank)
            gA = cute.local_tile(cute.domain_offset((first_row, 0), mA), (bm, bk),
                                 (m_blk, None))
            tAsA, tAgA = cpasync.tma_partition(
                tma_a, 0, cute.make_layout(1), cute.group_modes(sA, 0, 2),
                cute.group_modes(gA, 0, 2))
            for k in range(sched.k_tiles):
                pipe.producer_acquire(state)
                bar = pipe.producer_get_barrier(state)
                cute.copy(tma_a, tAgA[(None, k)], tAsA[(None, state.index)], tma_bar_ptr=bar)
                for h in cutlass.range_constexpr(self.halves):
                    b_box = tBgB[(None, n_blk + h * sched.n_tiles, k, e)]
                    if cutlass.const_expr(self.cluster_m > 1):
                        cute.copy(tma_b, b_box, tBsB[(None, h, 0, state.index)],
                                  tma_bar_ptr=bar, mcast_mask=mcast)
                    else:
                        cute.copy(tma_b, b_box, tBsB[(None, h, 0, state.index)],
                                  tma_bar_ptr=bar)
                pipe.producer_commit(state)
                state.advance()
            t = t + sched.step
        pipe.producer_tail(state)

    @cute.jit
    def consume(self, pipe: pipeline.PipelineTmaAsync, tiled_mma: cute.TiledMma,
                sA: cute.Tensor, sB: cute.Tensor, sC_teams: cute.Tensor, mOut: cute.Tensor,
                mSlots: cute.Tensor, mWeights: cute.Tensor, turns: cute.Pointer,
                tidx: cutlass.Int32, warp: cutlass.Int32, sched: Schedule):
        """Consumer warpgroups: a team (one or two warpgroups) takes every teams-th unit
        of the CTA, runs its mainloop into registers, then its epilogue."""
        bm = self.block_m
        team = cutlass.Int32(0)
        if cutlass.const_expr(self.teams > 1):
            team = (warp - 4) // 4
        ctid = tidx - THREADS_PER_WG - team * self.tile_threads
        sC = sC_teams[(None, None, team)]
        thr_mma = tiled_mma.get_slice(ctid)
        if cutlass.const_expr(self.swap_ab):  # weights are wgmma's A, tokens its B
            tCrA = tiled_mma.make_fragment_A(thr_mma.partition_A(sB))
            tCrB = tiled_mma.make_fragment_B(thr_mma.partition_B(sA))
            acc = cute.make_rmem_tensor(thr_mma.partition_shape_C((self.block_n, bm)),
                                        cutlass.Float32)
        else:
            tCrA = tiled_mma.make_fragment_A(thr_mma.partition_A(sA))
            tCrB = tiled_mma.make_fragment_B(thr_mma.partition_B(sB))
            acc = cute.make_rmem_tensor(thr_mma.partition_shape_C((bm, self.block_n)),
                                        cutlass.Float32)
        j = team
        t = sched.first + j * sched.step
        while t < sched.total:
            _, first_row, count, m_blk, n_blk = self.find_tile(
                t, sched.tile_start, sched.row_start, sched.n_tiles, sched.rank)
            self.mainloop(pipe, tiled_mma, acc, tCrA, tCrB, turns, team, j, sched.k_tiles)
            for chunk in cutlass.range_constexpr(self.out_n // self.epi_cols):
                if cutlass.const_expr(self.swap_ab):
                    self.stage_transposed(acc, sC, thr_mma)
                else:
                    self.stage_chunk(acc, sC, tiled_mma, ctid, chunk)
                self.sync_team(team)
                self.store_tile(sC, mOut, mSlots, mWeights, ctid,
                                count - m_blk * bm, first_row + m_blk * bm,
                                n_blk * self.out_n + chunk * self.epi_cols)
                self.sync_team(team)
            j = j + self.teams
            t = sched.first + j * sched.step

    @cute.jit
    def mainloop(self, pipe: pipeline.PipelineTmaAsync, tiled_mma: cute.TiledMma,
                 acc: cute.Tensor, tCrA: cute.Tensor, tCrB: cute.Tensor, turns: cute.Pointer,
                 team: cutlass.Int32, j: cutlass.Int32, k_tiles: cutlass.Int32):
        """The team's ``j``-th unit: wgmma over its k_tiles stages into ``acc``, which
        fill the pipeline from stage j * k_tiles; each stage is freed once its wgmma is."""
        read = self.pipeline_state(j * k_tiles)
        release = self.pipeline_state(j * k_tiles)
        if cutlass.const_expr(self.pingpong):
            self.wait_turn(turns, team, j)
        acc.fill(0.0)
        tiled_mma.set(warpgroup.Field.ACCUMULATE, True)
        warpgroup.fence()
        k_blocks = cute.size(tCrA, mode=[2])
        for k in range(k_tiles):
            pipe.consumer_wait(read)
            for kb in cutlass.range_constexpr(k_blocks):
                coord = (None, None, kb, read.index)
                cute.gemm(tiled_mma, acc, tCrA[coord], tCrB[coord], acc)
            warpgroup.commit_group()
            read.advance()
            # Keep one wgmma batch in flight; free the stage before it.
            if k > 0:
                warpgroup.wait_group(1)
                pipe.consumer_release(release)
                release.advance()
        if cutlass.const_expr(self.pingpong):  # every wait of this tile passed
            cute.arch.mbarrier_arrive(turns + (1 - team))
        warpgroup.wait_group(0)
        pipe.consumer_release(release)
    @cute.jit
    def wait_turn(self, turns: cute.Pointer, team: cutlass.Int32, j: cutlass.Int32):
        """Pingpong: a team's mainloop starts once the other team's previous mainloop has
        waited on all its stages. Besides keeping the two mainloops from sharing the
        tensor cores, this keeps a team's stage waits at most one barrier phase ahead:
        it skips the other team's stages, and parity waits cannot tell phases two apart.
        Team ``team``'s n-th tile (j = team + 2n) waits for completion n - 1 + team of
        its turn barrier, which the other team arrives on after each mainloop."""
        completion = (j - team) // 2 - 1 + team
        if completion >= 0:
            cute.arch.mbarrier_wait(turns + team, completion % 2)

    def pipeline_state(self, count: cutlass.Int32) -> pipeline.PipelineState:
        """The consumer's pipeline position after ``count`` stages."""
        return pipeline.PipelineState(self.stages, count, count % self.stages,
                                      (count // self.stages) % 2)

    @cute.jit
    def sync_team(self, team: cutlass.Int32):
        """Barrier over the warpgroups of one tile (named barrier 1 + team)."""
        cute.arch.barrier(barrier_id=1 + team, number_of_threads=self.tile_threads)

    @cute.jit
    def stage_chunk(self, acc: cute.Tensor, sC: cute.Tensor, tiled_mma: cute.TiledMma,
                    ctid: cutlass.Int32, chunk: cutlass.Constexpr):
        """Accumulator columns of epilogue step ``chunk`` (and, for w13, their up columns)
        -> bf16 in the staging buffer, by stmatrix."""
        bm = self.block_m
        dtype = sC.element_type
        # The whole (bm, bn) accumulator tile viewed onto the staging buffer: column
        # c = within + epi_cols * chunk + out_n * half lands at (half * epi_cols + within),
        # whatever its chunk, so a partition of the full tile addresses any chunk.
        pitch = self.halves * self.epi_cols + EPI_PAD
        sC_tile = cute.make_tensor(sC.iterator, cute.make_layout(
            (bm, ((self.epi_cols, self.out_n // self.epi_cols), self.halves)),
            stride=(pitch, ((1, 0), self.epi_cols))))
        r2s = cute.make_tiled_copy_S(
            sm90_utils.get_smem_store_op(utils.LayoutEnum.ROW_MAJOR, dtype, cutlass.Float32),
            cute.make_tiled_copy_C_atom(
                cute.make_copy_atom(cute.nvgpu.warp.StMatrix8x8x16bOp(False, 4), dtype),
                tiled_mma))
        thr_r2s = r2s.get_slice(ctid)
        tRS_sC = thr_r2s.partition_D(sC_tile)
        tRS_acc = r2s.retile(acc)
        # Per 64-row MMA block and 16-column group n, the retiled accumulator holds
        # values [8n, 8n + 8) in the order the smem-store partition (m, n) takes them.
        tRS_f32 = cute.make_rmem_tensor(thr_r2s.partition_S(sC_tile)[(None, 0, 0)].shape,
                                        cutlass.Float32)
        per_group = cute.size(tRS_f32)
        tRS_out = cute.make_rmem_tensor(tRS_f32.shape, dtype)
        for m in cutlass.range_constexpr(cute.size(tRS_acc, mode=[1])):
            acc_m = tRS_acc[(None, m, None)]
            for h in cutlass.range_constexpr(self.halves):
                for g in cutlass.range_constexpr(self.epi_cols // 16):
                    n = (h * self.out_n + chunk * self.epi_cols) // 16 + g
                    for v in cutlass.range_constexpr(per_group):
                        tRS_f32[v] = acc_m[n * per_group + v]
                    tRS_out.store(tRS_f32.load().to(dtype))
                    cute.copy(r2s, tRS_out, tRS_sC[(None, m, n)])

    @cute.jit
    def stage_transposed(self, acc: cute.Tensor, sC: cute.Tensor, thr_mma: cute.ThrMma):
        """Swap-AB accumulator (weight row w, token r) -> staging buffer (r, w): token
        rows, output columns (w13: gate columns, then up), as ``stage_chunk`` leaves it."""
        pitch = self.halves * self.epi_cols + EPI_PAD
        sC_t = cute.make_tensor(sC.iterator, cute.make_layout((self.block_n, self.block_m),
                                                              stride=(1, pitch)))
        staged = cute.make_rmem_tensor(acc.shape, sC.element_type)
        staged.store(acc.load().to(sC.element_type))
        cute.autovec_copy(staged, thr_mma.partition_C(sC_t))

    @cute.jit
    def store_tile(self, sC: cute.Tensor, mOut: cute.Tensor, mSlots: cute.Tensor,
                   mWeights: cute.Tensor, ctid: cutlass.Int32, rows: cutlass.Int32,
                   first_row: cutlass.Int32, first_col: cutlass.Int32):
        """Staged tile -> global, 16 bytes per thread and step, rows past the expert
        skipped: SiLU(gate) * up (w13), or routing-weight scaled rows scattered to their
        token slots (w2)."""
        per_row = self.epi_cols // VEC
        rows_per_step = self.tile_threads // per_row
        col = (ctid % per_row) * VEC
        if rows > self.block_m:  # the rows of this tile (thin tiles have fewer than threads)
            rows = cutlass.Int32(self.block_m)
        for step in cutlass.range_constexpr((self.block_m + rows_per_step - 1) // rows_per_step):
            r = step * rows_per_step + ctid // per_row
            if r < rows:
                src = cute.local_tile(sC, (1, VEC), (r, col // VEC)).load().to(cutlass.Float32)
                dst_row = first_row + r
                if cutlass.const_expr(self.silu_mul):
                    up = cute.local_tile(sC, (1, VEC), (r, (col + self.epi_cols) // VEC))
                    up = up.load().to(cutlass.Float32)
                    src = src / (1.0 + cute.math.exp(-src, fastmath=True)) * up
                else:
                    dst_row = mSlots[first_row + r]
                    src = src * mWeights[dst_row]
                dst = cute.local_tile(mOut, (1, VEC), (dst_row, (first_col + col) // VEC))
                dst.store(src.to(mOut.element_type))
