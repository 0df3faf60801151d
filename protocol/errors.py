"""The one error type a decoder raises, so every caller can catch bad input in one place."""
from dni.errors import DniError

__all__ = ["ProtocolError"]


class ProtocolError(DniError, ValueError):
    """A message, address or key that cannot be accepted; the text names the problem."""

    exit_code = 2
