"""A worker's event loop and what it does with each message: sockets, sessions, commands, checks, the step's actions."""

__all__: list[str] = []
