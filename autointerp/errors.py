"""The one exception type users see: a message that says what was wrong and what to do."""


class AutointerpError(Exception):
    """Bad input or a state we refuse to work in. The CLI prints the message, no traceback."""
