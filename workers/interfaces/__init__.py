"""The DNI interfaces a stage holds on its edges: the synthesizers, their stash of weights, their regression."""

__all__: list[str] = []
