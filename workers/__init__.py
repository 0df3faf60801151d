"""Layer workers: each process owns one stage, its synthesizer and its optimiser."""

__all__: list[str] = []
