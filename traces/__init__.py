"""Routing and request-arrival traces: format spec (FORMAT.md), generators, converters.

Installed as ``ramp.traces``. Trace I/O itself (reader, writer, validation) lives in the
core, ``ramp.trace``, so engine adapters can record traces without this package.
``ramp.traces.sglang_dump`` converts SGLang's expert-distribution dumps (needs torch).
"""

from ramp.traces.converters import read_azure_csv
from ramp.traces.generators import (
    DEFAULT_PRESET,
    PRESET_NAMES,
    PRESETS,
    RoutingStats,
    generate_steps,
    get_preset,
    routing_summary,
    serving_schedule,
    synthetic_header,
    synthetic_trace,
)

__all__ = [
    "DEFAULT_PRESET",
    "PRESETS",
    "PRESET_NAMES",
    "RoutingStats",
    "generate_steps",
    "get_preset",
    "read_azure_csv",
    "routing_summary",
    "serving_schedule",
    "synthetic_header",
    "synthetic_trace",
]
