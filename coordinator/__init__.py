"""The coordinator: builds a job, starts or finds its workers, feeds data, evaluates, records."""

__all__: list[str] = []
