"""`python -m workers --bind ADDRESS`: run one worker process (what `dni worker` runs)."""
from workers.cli import main

main()
