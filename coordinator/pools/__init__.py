"""The job's workers: local processes, remote workers, torchrun ranks, and the pipeline that talks to them."""

__all__: list[str] = []
