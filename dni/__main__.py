"""`python -m dni ...` is the `dni` command."""
from dni.coordinator.cli import main

main()
