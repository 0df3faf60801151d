"""One stage's arithmetic, without sockets: the stage, its blocks, its losses, optimisers and checkpoints."""

__all__: list[str] = []
