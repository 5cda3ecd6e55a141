"""``python -m flowcraft``: the command-line interface."""

from .cli import main

main()
