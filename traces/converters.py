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

from ramp.errors import InputError
from ramp.plaindata import os_reason
from ramp.trace import Arrival

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
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read CSV ({os_reason(exc)})") from None
    with f:
        try:
            yield from _azure_rows(path, csv.DictReader(f))
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}: CSV is not UTF-8 text (byte {exc.object[exc.start]:#04x} "
                             "after the last good row)") from None
        except csv.Error as exc:
            raise InputError(f"{path}: malformed CSV ({exc})") from None


def _azure_rows(path: Path, reader: csv.DictReader) -> Iterator[Arrival]:
    """Arrivals of an Azure CSV's rows; errors name the file, row and column."""
    missing = [c for c in AZURE_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise InputError(f"{path}:1: missing column(s) {missing}; an Azure LLM trace has "
                         f"{list(AZURE_COLUMNS)}")
    start = last = None
    for row in reader:
        where = f"{path}:{reader.line_num}"
        try:
            stamp = datetime.fromisoformat((row["TIMESTAMP"] or "").strip()).timestamp()
        except ValueError:
            raise InputError(f"{where}: field 'TIMESTAMP' {row['TIMESTAMP']!r} is not "
                             "an ISO date-time") from None
        start = stamp if start is None else start
        if last is not None and stamp < last:
            raise InputError(f"{where}: field 'TIMESTAMP' goes backwards")
        last = stamp
        counts = []
        for col in AZURE_COLUMNS[1:]:
            text = (row[col] or "").strip()
            if not (text.isascii() and text.isdigit() and len(text) <= 9 and int(text) > 0):
                raise InputError(f"{where}: field {col!r} must be a positive int, "
                                 f"got {text!r}")
            counts.append(int(text))
        yield Arrival(stamp - start, counts[0], counts[1])
