"""Layer workers: each process owns one stage, its synthesizer and its optimiser."""
