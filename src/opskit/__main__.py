"""`python -m opskit`: the same as the `opskit` command."""

from .cli import main

main()
