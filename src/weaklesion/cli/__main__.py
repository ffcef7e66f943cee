"""``python -m weaklesion.cli``: the ``weaklesion`` command."""

from weaklesion.cli import main

main()
