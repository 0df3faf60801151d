"""`python -m dni ...` is the `dni` command."""
from dni.cli import main

__all__: list[str] = []

main()
