"""Errors by kind. Each kind decides what a stage may do when it meets one and how the CLI ends:
bad input found before the work is done may undo what the run registered (exit 2); a lock timeout,
an LLM failure or an internal error never deletes finished work (exit 1, with the cause). The CLI
prints any of them as one line, no traceback."""


class AutointerpError(Exception):
    """The base of the kinds below; never raised itself, so every error says which kind it is."""

    exit_code = 1

    def __init__(self, *args: object):
        if type(self) is AutointerpError:
            raise TypeError("raise a kind of AutointerpError (BadInput, LockTimeout, LLMError, InternalError)")
        super().__init__(*args)


class BadInput(AutointerpError):
    """Wrong input, or a state we refuse to work in: fixing the input is the fix."""

    exit_code = 2


class LockTimeout(AutointerpError):
    """The database stayed locked by another process for longer than we were willing to wait."""

    def __init__(self, message: str, holder: str | None = None):
        super().__init__(message)
        self.holder = holder  # "PROGRAM (PID N)" as DuckDB names it, when it does


class LLMError(AutointerpError):
    """An LLM endpoint failed past its retries, or refused the request."""


class InternalError(AutointerpError):
    """A failure of autointerp or its database that the user's input did not cause (a read or write
    that failed, a broken invariant); the message carries the cause."""


def is_bad_input(exc: BaseException) -> bool:
    """True for bad input: what the user can fix by changing the command or its files."""
    return isinstance(exc, BadInput)


def cause(exc: BaseException) -> str:
    """The first line of an underlying error's message (DuckDB adds the SQL and a caret below it), so the
    error that carries it stays one line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
