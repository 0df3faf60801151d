"""The one error type a decoder raises, so every caller can catch bad input in one place."""


class ProtocolError(ValueError):
    """A message that cannot be accepted; the text names the problem."""
