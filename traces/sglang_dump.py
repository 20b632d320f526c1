"""SGLang expert-distribution dumps as RaMP routing traces.

SGLang records routing itself when started with ``--expert-distribution-recorder-mode``
and driven through ``/start_expert_distribution_record`` and
``/dump_expert_distribution_record`` (``sglang/srt/eplb/expert_distribution.py``, read at
SGLang 0.5.23). Its ``torch.save``'d dumps hold per-step data in every mode:

- ``stat``: ``{"rank", "logical_count": [steps, layers, logical experts],
  "average_utilization_rate_over_window"}``, one file written by rank 0. Steps come from
  a ring buffer (``--expert-distribution-recorder-buffer-size``, default 1000; ``-1``
  keeps all): unused slots are zero and, once it wrapped, the order is rotated. The
  buffer is all-reduced over ranks, so when every rank counted the same tokens (tensor
  parallelism without DP attention) counts are multiplied by that many ranks: pass
  ``replicas``.
- ``per_pass``: ``{"records": [{"forward_pass_id", "rank", "gatherer_key",
  "global_physical_count": [layers, physical experts]}, ...],
  "last_physical_to_logical_map": [layers, physical experts]}``, one file per rank.
- ``per_token``: as ``per_pass``, each record also with ``forward_mode``, ``input_ids``
  and ``topk_ids_of_layer`` ``[layers, tokens, 8]`` (physical ids, ``-1`` unused).

Per-pass records of one ``forward_pass_id`` from several ranks are one step: identical
counts are replicas of the same tokens (tensor parallelism) and are taken once,
different counts are the ranks' own tokens (DP attention) and are summed. Physical
expert ids (EPLB replicas) are mapped back to the model's logical experts. SGLang keeps
a row for every decoder layer; the MoE layers are the rows that are ever non-zero.
Only ``per_token`` dumps carry the forward mode; other steps are marked ``mixed``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ramp.errors import InputError
from ramp.models import get_model
from ramp.trace import TraceHeader, TraceStep, TraceWriter

# SGLang ForwardMode values (an IntEnum of auto() members: EXTEND=1, DECODE=2, MIXED=3).
PHASES = {1: "prefill", 2: "decode", 3: "mixed"}
DETAIL_TOP_K = 8  # SGLang's per_token gatherer keeps 8 ids per token


@dataclass
class DumpSummary:
    """What a conversion wrote and left out."""

    mode: str
    steps: int = 0
    empty: int = 0                          # all-zero steps (unused ring slots, idle)
    files: list[str] = field(default_factory=list)


def read_sglang_dump(path: str | Path) -> dict[str, Any]:
    """Load one dump (tensors only, no pickled code: ``weights_only``)."""
    try:
        import torch
    except ImportError:
        raise InputError(f"{path}: reading an SGLang dump needs torch") from None
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise InputError(f"{path}: not a readable torch.save file ({exc})") from None
    if not isinstance(data, dict) or not ({"logical_count", "records"} & set(data)):
        raise InputError(f"{path}: not an SGLang expert-distribution dump (no "
                         "'logical_count' or 'records')")
    return data


def dump_mode(dump: Mapping[str, Any]) -> str:
    if "logical_count" in dump:
        return "stat"
    records = dump["records"]
    return "per_token" if records and "topk_ids_of_layer" in records[0] else "per_pass"


def sglang_dump_steps(dumps: Sequence[Mapping[str, Any]], header: TraceHeader, *,
                      replicas: int = 1, moe_layer_ids: Sequence[int] | None = None,
                      summary: DumpSummary | None = None) -> Iterator[TraceStep]:
    """Trace steps from the dumps of one recording (one per rank for ``per_pass`` and
    ``per_token``). ``moe_layer_ids`` picks SGLang's rows explicitly."""
    if not dumps:
        raise InputError("no SGLang dumps given")
    modes = {dump_mode(d) for d in dumps}
    if len(modes) != 1:
        raise InputError(f"dumps of different modes {sorted(modes)}: convert them apart")
    mode = modes.pop()
    summary = summary if summary is not None else DumpSummary(mode)
    summary.mode = mode
    if mode == "stat":
        if len(dumps) != 1:
            raise InputError("a 'stat' dump is already summed over ranks: give one file")
        counts = _stat_counts(dumps[0], replicas, header.num_experts)
        passes: list[tuple[np.ndarray, str, np.ndarray | None]] = [
            (c, "mixed", None) for c in counts]
    else:
        passes = _per_pass(dumps, header.num_experts)
    if not passes:
        raise InputError("the SGLang dump holds no steps")
    rows = _moe_rows(np.stack([p[0] for p in passes]), header.moe_layers, moe_layer_ids)
    kept = 0
    for i, (counts, phase, ids) in enumerate(passes):
        hists = counts[rows]
        total = int(hists[0].sum())
        if total == 0 and not hists.any():
            summary.empty += 1
            continue
        sums = hists.sum(axis=1)
        if np.any(sums != total) or total % header.top_k:
            raise InputError(f"SGLang step {i}: per-layer sums {sorted(set(sums.tolist()))} "
                             f"are not one multiple of top_k={header.top_k}")
        tokens = total // header.top_k
        topk = None if ids is None else _topk(ids[rows], hists, header)
        yield TraceStep(step=kept, phase=phase, tokens=tokens, hists=hists, topk_ids=topk)
        kept += 1
        summary.steps = kept


def convert_sglang_dump(paths: Sequence[str | Path], out: str | Path, model: str, *,
                        replicas: int = 1, moe_layer_ids: Sequence[int] | None = None
                        ) -> DumpSummary:
    """Write the SGLang dumps ``paths`` as a RaMP trace ``out`` for catalog ``model``
    (replacing ``out``). The entry point for ``ramp-sim``'s converter command."""
    catalog = get_model(model)
    dumps = [read_sglang_dump(p) for p in paths]
    summary = DumpSummary(dump_mode(dumps[0]) if dumps else "", files=[str(p) for p in paths])
    header = TraceHeader.from_model(catalog, source=f"converted:sglang-{summary.mode}",
                                    engine="sglang",
                                    meta={"dumps": summary.files, "replicas": replicas})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    steps = list(sglang_dump_steps(dumps, header, replicas=replicas,
                                   moe_layer_ids=moe_layer_ids, summary=summary))
    out.unlink(missing_ok=True)
    with TraceWriter(out, header) as writer:
        for step in steps:
            writer.append(step)
    return summary


def _numpy(value: Any, what: str) -> np.ndarray:
    try:
        return np.asarray(value.numpy() if hasattr(value, "numpy") else value)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"SGLang dump: field {what!r} is not an array") from None


def _stat_counts(dump: Mapping[str, Any], replicas: int, num_experts: int) -> np.ndarray:
    counts = _numpy(dump["logical_count"], "logical_count").astype(np.int64)
    if counts.ndim != 3 or counts.shape[2] != num_experts:
        raise InputError(f"SGLang dump: 'logical_count' has shape {list(counts.shape)}, "
                         f"expected [steps, layers, {num_experts}]")
    if replicas < 1 or np.any(counts % replicas):
        raise InputError(f"SGLang dump: counts are not multiples of replicas={replicas}")
    return counts // replicas


def _per_pass(dumps: Sequence[Mapping[str, Any]], num_experts: int
              ) -> list[tuple[np.ndarray, str, np.ndarray | None]]:
    """Logical counts per forward pass, ranks combined, in forward-pass order."""
    by_pass: dict[int, list[tuple[np.ndarray, str, np.ndarray | None]]] = {}
    for dump in dumps:
        mapping = _numpy(dump["last_physical_to_logical_map"],
                         "last_physical_to_logical_map").astype(np.int64)
        for record in dump["records"]:
            physical = _numpy(record["global_physical_count"], "global_physical_count")
            counts = _to_logical(physical.astype(np.int64), mapping, num_experts)
            phase = PHASES.get(int(record.get("forward_mode", 0)), "mixed")
            ids = record.get("topk_ids_of_layer")
            if ids is not None:
                ids = _ids_to_logical(_numpy(ids, "topk_ids_of_layer").astype(np.int64),
                                      mapping)
            by_pass.setdefault(int(record["forward_pass_id"]), []).append((counts, phase, ids))
    passes = []
    for _, parts in sorted(by_pass.items()):
        first = parts[0]
        if all(np.array_equal(p[0], first[0]) for p in parts[1:]):
            passes.append(first)  # replicas of the same tokens (tensor parallelism)
        else:                     # each rank's own tokens: their sum, token ids dropped
            passes.append((sum(p[0] for p in parts), first[1], None))
    return passes


def _to_logical(physical: np.ndarray, mapping: np.ndarray, num_experts: int) -> np.ndarray:
    if physical.shape != mapping.shape:
        raise InputError(f"SGLang dump: physical counts {list(physical.shape)} do not match "
                         f"the physical-to-logical map {list(mapping.shape)}")
    layers = np.broadcast_to(np.arange(mapping.shape[0])[:, None], mapping.shape)
    valid = (mapping >= 0) & (mapping < num_experts)
    out = np.zeros((mapping.shape[0], num_experts), dtype=np.int64)
    np.add.at(out, (layers[valid], mapping[valid]), physical[valid])
    return out


def _ids_to_logical(ids: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """[layers, tokens, 8] physical ids -> logical ids (-1 stays -1)."""
    layer = np.arange(ids.shape[0])[:, None, None]
    return np.where(ids >= 0, mapping[layer, np.clip(ids, 0, mapping.shape[1] - 1)], -1)


def _moe_rows(counts: np.ndarray, moe_layers: int, ids: Sequence[int] | None) -> list[int]:
    """SGLang's rows of the model's MoE layers: given, or the rows ever non-zero."""
    rows = list(ids) if ids is not None else np.flatnonzero(counts.any(axis=(0, 2))).tolist()
    if len(rows) != moe_layers or (rows and (min(rows) < 0 or max(rows) >= counts.shape[1])):
        raise InputError(f"SGLang dump: found MoE layer rows {rows} of {counts.shape[1]}, "
                         f"the model has {moe_layers} MoE layers (pass moe_layer_ids)")
    return rows


def _topk(ids: np.ndarray, hists: np.ndarray, header: TraceHeader) -> np.ndarray | None:
    """Token-level ids [moe_layers, tokens, top_k] when they account for the histograms."""
    if header.top_k > DETAIL_TOP_K:
        return None
    tokens = int(hists[0].sum()) // header.top_k
    picked = ids[:, :tokens, :header.top_k]
    if picked.shape[1] != tokens or picked.min(initial=0) < 0:
        return None
    counts = np.stack([np.bincount(layer.ravel(), minlength=header.num_experts)
                       for layer in picked])
    return picked.astype(np.int32) if np.array_equal(counts, hists) else None
