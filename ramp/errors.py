"""Error types: bad input is reported with where it came from, never as a traceback."""

from __future__ import annotations


class RampError(Exception):
    """Base class of every error RaMP raises on purpose."""


class InputError(RampError, ValueError):
    """Invalid user input: the message names the source (file, line, field)."""


class ProfileMismatchError(RampError):
    """A profile was measured for another GPU, problem shape or kernel-family version."""


class CapacityError(InputError):
    """Valid input that does not fit the hardware (weights larger than GPU memory): the
    one error for which trying more GPUs is the right response."""
