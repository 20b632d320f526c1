"""Routing and request-arrival traces: format spec (FORMAT.md), generators, converters.

Installed as ``ramp.traces``. Trace I/O itself (reader, writer, validation) lives in the
core, ``ramp.trace``, so engine adapters can record traces without this package.
"""

from ramp.traces.converters import read_azure_csv, read_sglang_dump, sglang_stat_steps
from ramp.traces.generators import (
    PRESETS,
    RoutingStats,
    default_preset,
    generate_steps,
    get_preset,
    routing_summary,
    serving_schedule,
    synthetic_header,
)

__all__ = [
    "PRESETS",
    "RoutingStats",
    "default_preset",
    "generate_steps",
    "get_preset",
    "read_azure_csv",
    "read_sglang_dump",
    "routing_summary",
    "serving_schedule",
    "sglang_stat_steps",
    "synthetic_header",
]
