"""What the ``ramp`` and ``ramp-sim`` commands share: RaMP errors as one line with exit
status 2 (click's own usage errors use 2 as well), option types that refuse NaN and
infinity, and output paths checked before a long run rather than after it."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

import click

from ramp.errors import InputError, RampError
from ramp.plaindata import os_reason


class ErrorGroup(click.Group):
    """A command group that reports RaMP's own errors as ``error: <message>`` on one
    line and exits with status 2, never with a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RampError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


class FilePath(click.Path):
    """click.Path that refuses a NUL byte as a usage error (click's own check calls
    ``os.stat``, which raises ValueError for one)."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        if "\x00" in os.fsdecode(value):
            self.fail(f"{value!r} contains a NUL byte", param, ctx)
        return super().convert(value, param, ctx)


class FiniteFloat(click.ParamType):
    """A float option that must be finite and at least (or above) ``low``: click's FLOAT
    accepts 'nan' and 'inf', which no RaMP option means."""

    name = "number"

    def __init__(self, low: float | None = None, low_open: bool = False) -> None:
        self.low = low
        self.low_open = low_open

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, float):
            number = value
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.low is not None and (number < self.low or (self.low_open and number == self.low)):
            bound = ">" if self.low_open else ">="
            self.fail(f"{value!r} must be {bound} {self.low:g}", param, ctx)
        return number


def _bad_path(message: str, option: str) -> click.BadParameter:
    return click.BadParameter(message, param_hint=f"'{option}'")


def _make_dir(directory: Path, option: str) -> None:
    """``mkdir -p``, naming the ancestor in the way when one is not a directory."""
    for ancestor in (directory, *directory.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise _bad_path(f"{ancestor} is not a directory", option)
            break
    directory.mkdir(parents=True, exist_ok=True)


def check_output_file(path: str | None, option: str) -> None:
    """Fail now, naming ``option``, when ``path`` cannot be written: its directory is
    created (as the write would) and a file is opened there and removed again."""
    if not path:
        return
    target = Path(path)
    try:
        if target.is_dir():
            raise _bad_path(f"{path} is a directory", option)
        _make_dir(target.parent, option)
        if target.exists():
            with target.open("a"):
                pass
        else:
            with target.open("x"):
                pass
            target.unlink()
    except (OSError, ValueError) as exc:
        raise _bad_path(f"cannot write {path} ({os_reason(exc)})", option) from None


def check_plot_file(path: str | None, option: str) -> None:
    """``check_output_file`` for a plot, whose suffix must also be a format matplotlib
    writes: found before a run, not after it."""
    if not path:
        return
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = Path(path).suffix[1:].lower()
    if suffix not in formats:
        raise _bad_path(f"{path}: a plot must end in one of "
                        f"{', '.join('.' + f for f in sorted(formats))}", option)
    check_output_file(path, option)


def check_output_dir(path: str | None, option: str) -> None:
    """Like ``check_output_file`` for a directory that files will be written into."""
    if not path:
        return
    probe = Path(path) / f".ramp-write-check-{os.getpid()}"
    try:
        _make_dir(Path(path), option)
        with probe.open("x"):
            pass
        probe.unlink()
    except (OSError, ValueError) as exc:
        raise _bad_path(f"cannot write into {path} ({os_reason(exc)})", option) from None


def positive_ints(text: str, option: str) -> list[int]:
    """A comma-separated option of whole numbers >= 1 (``--tokens 1,4,16``), or an
    InputError naming the option."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"option {option}: {text!r} is not comma-separated integers") from None
    if any(v < 1 for v in values):
        raise InputError(f"option {option}: values must be >= 1")
    return values
