"""`python -m dni.workers --bind ADDRESS`: run one worker process (what `dni worker` runs)."""
from dni.workers.cli import main

__all__: list[str] = []

main()
