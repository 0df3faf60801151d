"""A job: its settings and files (the shortcuts' TOML files live here too), its stages' assignments and model cuts."""

__all__: list[str] = []
