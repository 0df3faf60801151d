"""`python -m dni ...` is the `dni` command."""
from dni.coordinator.cli import main

__all__: list[str] = []

main()
