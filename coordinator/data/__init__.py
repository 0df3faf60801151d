"""Where a job's examples come from: datasets, their normalisation, and the generated sequence tasks."""

__all__: list[str] = []
