"""Converters from other tools' traces to RaMP's formats.

- Azure LLM inference traces (``AzureLLMInferenceTrace_{conv,code}.csv``, columns
  ``TIMESTAMP, ContextTokens, GeneratedTokens``; Patel et al., Splitwise, ISCA 2024) to a
  request-arrival stream.
- SGLang's expert-distribution recorder dump (``--expert-distribution-recorder-mode
  stat``: a ``torch.save``'d dict whose ``logical_count`` is ``[steps, layers, experts]``
  token-expert counts per forward pass) to a routing trace. SGLang does not record
  the forward mode in that dump, so steps are marked ``mixed``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from ramp.errors import InputError
from ramp.trace import Arrival, TraceHeader, TraceStep

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
AZURE_PROVENANCE = {
    "origin": "github.com/Azure/AzurePublicDataset (data/AzureLLMInferenceTrace_*.csv)",
    "license": "CC-BY-4.0",
    "citation": "Patel et al., Splitwise: Efficient generative LLM inference using phase "
                "splitting, ISCA 2024",
}


def read_azure_csv(path: str | Path) -> Iterator[Arrival]:
    """Stream an Azure LLM inference trace CSV as arrivals (times relative to row 1).

    Rows with zero context or generated tokens cannot be served and raise, as does a
    timestamp that goes backwards.
    """
    path = Path(path)
    try:
        f = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise InputError(f"{path}: cannot read CSV ({exc.strerror})") from None
    with f:
        reader = csv.DictReader(f)
        missing = [c for c in AZURE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}:1: missing column(s) {missing}; an Azure LLM trace has "
                             f"{list(AZURE_COLUMNS)}")
        start = last = None
        for row in reader:
            where = f"{path}:{reader.line_num}"
            try:
                stamp = datetime.fromisoformat(row["TIMESTAMP"].strip()).timestamp()
            except ValueError:
                raise InputError(f"{where}: field 'TIMESTAMP' {row['TIMESTAMP']!r} is not "
                                 "an ISO date-time") from None
            start = stamp if start is None else start
            if last is not None and stamp < last:
                raise InputError(f"{where}: field 'TIMESTAMP' goes backwards")
            last = stamp
            counts = []
            for col in AZURE_COLUMNS[1:]:
                text = row[col].strip()
                if not text.isdigit() or int(text) == 0:
                    raise InputError(f"{where}: field {col!r} must be a positive int, "
                                     f"got {text!r}")
                counts.append(int(text))
            yield Arrival(stamp - start, counts[0], counts[1])


def sglang_stat_steps(logical_count: Any, header: TraceHeader,
                      moe_layer_ids: list[int] | None = None) -> Iterator[TraceStep]:
    """Trace steps from SGLang's ``logical_count`` ``[steps, layers, experts]``.

    ``moe_layer_ids`` picks the rows of MoE layers (SGLang keeps a row per decoder layer,
    all zero for dense ones); by default the last ``header.moe_layers`` rows. All-zero
    steps (unused slots of SGLang's circular buffer) are dropped. Token counts are
    recovered as ``sum(h) / top_k``.
    """
    counts = np.asarray(logical_count)
    if counts.ndim != 3 or counts.shape[2] != header.num_experts:
        raise InputError(f"logical_count: expected [steps, layers, {header.num_experts}], "
                         f"got shape {list(counts.shape)}")
    ids = moe_layer_ids or list(range(counts.shape[1] - header.moe_layers, counts.shape[1]))
    if len(ids) != header.moe_layers or min(ids) < 0 or max(ids) >= counts.shape[1]:
        raise InputError(f"logical_count: need {header.moe_layers} MoE layer rows out of "
                         f"{counts.shape[1]}, got {ids}")
    kept = 0
    for i, step in enumerate(counts[:, ids, :].astype(np.int64)):
        total = int(step[0].sum())
        if total == 0 and not step.any():
            continue
        sums = step.sum(axis=1)
        if np.any(sums != total) or total % header.top_k:
            raise InputError(f"logical_count[{i}]: layer sums {sorted(set(sums.tolist()))} "
                             f"are not one multiple of top_k={header.top_k}")
        yield TraceStep(step=kept, phase="mixed", tokens=total // header.top_k, hists=step)
        kept += 1


def read_sglang_dump(path: str | Path) -> np.ndarray:
    """``logical_count`` of an SGLang ``stat`` dump (``.pt``); needs torch installed."""
    try:
        import torch
    except ImportError:
        raise InputError(f"{path}: reading an SGLang dump needs torch (pip install torch)"
                         ) from None
    data = torch.load(str(path), map_location="cpu", weights_only=False)
    if not isinstance(data, dict) or "logical_count" not in data:
        raise InputError(f"{path}: not an SGLang 'stat' dump (no 'logical_count')")
    return data["logical_count"].numpy()
