"""Building a stage from its spec: the builder, the plug-in contracts and registry, the built-in stage kinds."""

__all__: list[str] = []
