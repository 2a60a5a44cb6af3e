"""``python -m agents.cli``: the ``darkroom`` command."""

from agents.cli.main import main

main()
