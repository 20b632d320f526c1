"""The eager-variant file: how a dispatch engine's eager calls run, switchable while it serves.

A benchmark compares ways of running an engine's eager steps inside one engine start
(free of the ~15% that separates starts): it writes one of ``VARIANTS`` into the file
named by ``RAMP_EAGER_VARIANT_FILE`` (``write``), and the engine's RaMP runtime reads it
back (``read``) at most every ``REREAD_S`` seconds. Calls inside a CUDA-graph capture
ignore it: a graph keeps what it captured. Both sides import this module, which needs
neither torch nor an engine.
"""

from __future__ import annotations

import time
from pathlib import Path

# ``plan``: as the layer plan says; ``engine``: the engine's kernel; ``launch``: the
# plan's paths launched kernel by kernel, even where the plan replays eager calls from
# CUDA graphs
VARIANTS = ("plan", "engine", "launch")
REREAD_S = 0.2  # the runtime re-reads the file at most this often


def read(path: str | Path) -> tuple[str, str | None]:
    """The variant the file names, and why it was not used (None: it was): ``plan`` for
    a missing file; ``plan`` and the reason for an unreadable file or an unknown name."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return "plan", None
    except (OSError, ValueError) as exc:  # ValueError: bytes that are not UTF-8
        return "plan", f"eager variant file {path} unreadable ({exc}); eager calls run as the plan says"
    if text not in VARIANTS:
        return "plan", (f"{path}: eager variant {text!r} is not one of {', '.join(VARIANTS)}; "
                        "eager calls run as the plan says")
    return text, None


def write(path: Path, variant: str, wait: bool = True) -> None:
    """Name ``variant`` in the file (atomically: a reader never sees half), and with
    ``wait`` sleep out two re-read intervals, so the engine's next eager call has it."""
    if variant not in VARIANTS:
        raise ValueError(f"eager variant {variant!r} is not one of {', '.join(VARIANTS)}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(variant + "\n", encoding="utf-8")
    tmp.replace(path)
    if wait:
        time.sleep(2 * REREAD_S + 0.1)
