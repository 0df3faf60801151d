"""`dni bench`: what update-unlocking buys (speedup, scaling) and what one hop costs (transport)."""

__all__: list[str] = []
