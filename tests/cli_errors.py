"""The one check every bad-input test of a CLI makes (imported by test modules)."""

from __future__ import annotations

from click.testing import CliRunner


def one_error_line(main, args) -> str:
    """Run the click command ``main`` with ``args``: exit 2, no traceback, exactly one
    ``error:`` line, which is returned."""
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.output
    return errors[0]
