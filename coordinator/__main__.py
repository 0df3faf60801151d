"""`python -m coordinator ...` is the `dni` command."""
from coordinator.cli import main

main()
