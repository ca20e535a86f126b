"""``python -m lampo_pl`` is the ``lampo`` command."""

from lampo_pl.cli import main

main()
