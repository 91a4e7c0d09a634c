"""The one place where library errors become messages and exit codes.

| exit | meaning |
| ---- | ------- |
| 0 | success |
| 1 | a job ran and did not succeed (failed, oom, timeout, invalid), or another farm error |
| 2 | bad input: nothing was run or queued |
| 3 | Redis cannot be reached or refused the farm |
| 4 | the run, job, result or schedule asked for does not exist |
| 5 | jobs were left that no live worker can serve (`farm submit --wait`) |
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.markup import escape

from farm.cli.app import err
from farm.errors import BrokerError, CheckpointError, ConfigError, FarmError, NotFoundError, SpecError

EXIT_OK, EXIT_JOB_FAILED, EXIT_BAD_INPUT, EXIT_BROKER, EXIT_NOT_FOUND, EXIT_UNSERVED = 0, 1, 2, 3, 4, 5

F = TypeVar("F", bound=Callable[..., Any])
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

_EXIT_CODES: list[tuple[type[FarmError], int]] = [
    (SpecError, EXIT_BAD_INPUT),
    (ConfigError, EXIT_BAD_INPUT),
    (CheckpointError, EXIT_BAD_INPUT),
    (BrokerError, EXIT_BROKER),
    (NotFoundError, EXIT_NOT_FOUND),
    (FarmError, EXIT_JOB_FAILED),
]


def fail(message: str, code: int) -> typer.Exit:
    """Print a one-line error to stderr and return the Exit to raise.

    The message is text, never markup: a path or value such as `[draft].yaml` is printed as is.
    Control characters (a newline or an escape sequence in a spec file's key, say) are shown
    escaped, so the message stays one line and cannot drive the terminal.
    """
    text = _CONTROL.sub(lambda m: repr(m[0])[1:-1], message)
    err.print(f"[bold red]error:[/] {escape(text)}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(code)


def exit_code_for(exc: FarmError) -> int:
    return next(code for cls, code in _EXIT_CODES if isinstance(exc, cls))


def handles_errors(fn: F) -> F:
    """Decorate a command: typed library errors become one line on stderr and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FarmError as e:
            raise fail(str(e), exit_code_for(e)) from None

    return wrapper  # type: ignore[return-value]
