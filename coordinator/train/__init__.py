"""Running a job: the trainer and its feeds, checkpoints, recovery, segments, interrupts, progress."""

__all__: list[str] = []
