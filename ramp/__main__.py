"""``python -m ramp``: the ``ramp`` command without an installed entry point."""

from ramp.cli import main

main()
