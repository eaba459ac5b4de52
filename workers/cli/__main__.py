"""``python -m workers.cli``: the same as the ``npc-memory`` console script."""

from workers.cli import main

main()
