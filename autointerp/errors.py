"""Errors by kind. Each kind decides what a stage may do when it meets one: only bad input found
before the work is done may undo what the run registered; a lock timeout, an LLM failure or a bug
never deletes finished work. The CLI prints any of them as one line, no traceback."""


class AutointerpError(Exception):
    """Base of every error the CLI reports as one line. Raised directly, it means bad input
    (older code raises it that way); new code raises one of the subclasses below."""


class BadInput(AutointerpError):
    """Wrong input, or a state we refuse to work in: fixing the input is the fix."""


class LockTimeout(AutointerpError):
    """The database stayed locked by another process for longer than we were willing to wait."""

    def __init__(self, message: str, holder: str | None = None):
        super().__init__(message)
        self.holder = holder  # "PROGRAM (PID N)" as DuckDB names it, when it does


class LLMError(AutointerpError):
    """An LLM endpoint failed past its retries, or refused the request."""


class InternalError(AutointerpError):
    """A bug or a broken invariant of autointerp itself, not the user's input."""


def is_bad_input(exc: BaseException) -> bool:
    """True for bad input: a BadInput, or a plain AutointerpError (the older way of raising it)."""
    return isinstance(exc, BadInput) or type(exc) is AutointerpError
