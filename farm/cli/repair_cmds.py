"""Bad records: the warning a reader's skip prints, `farm delete` to remove results, and the
confirmation that it and `farm import --replace` ask for.

A record a reader cannot parse is skipped by the store, which logs it (`farm.results.store`);
`warn_skipped_records` turns each into one warning line on stderr per command, naming the key and
the two ways to mend it. Plain functions; `farm.cli.main` registers them.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from farm.cli.lazy import lazy_module
from farm.cli.output import EXIT_BAD_INPUT, fail, note, one_line, warn

if TYPE_CHECKING:
    from farm.cluster import controller
else:
    controller = lazy_module("farm.cluster.controller")  # celery, redis, the store: run on first use (farm.cli.lazy)


class _SkippedRecords(logging.Handler):
    """One stderr warning per skipped key and command (the store logs every skip)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        key = getattr(record, "farm_key", None)
        if key is None or key in self.seen:
            return
        self.seen.add(key)
        job = getattr(record, "farm_job", "")
        why = getattr(record, "farm_why", "")
        hint = f"; remove it with `farm delete {job}` or mend it with `farm import FILE --replace {job}`"
        mendable = getattr(record, "farm_kind", "") == "result"  # a summary is re-derived by itself
        warn(one_line(f"skipped {key}: it {why}{hint if mendable else ''}"))


_HANDLER = _SkippedRecords()
# The store's logger (`farm.results.store.base.log`), named for the package: named here, so that
# listening on it does not import the store (redis, numpy) before a command needs the store.
STORE_LOGGER = "farm.results.store"


def warn_skipped_records() -> None:
    """Print skipped records as warnings from now on, each key once for this command."""
    _HANDLER.seen.clear()
    logger = logging.getLogger(STORE_LOGGER)
    if _HANDLER not in logger.handlers:
        logger.addHandler(_HANDLER)
        logger.propagate = False  # the warning is printed here, not again by a root handler


def confirm(question: str, yes: bool) -> None:
    """Ask before changing stored records; `--yes` skips the question, and without a terminal to
    ask on the command refuses (exit 2) rather than guess."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise fail(f"{question} refused: stdin is not a terminal to confirm on; pass --yes", EXIT_BAD_INPUT)
    if not typer.confirm(question, default=False, err=True):
        raise fail("nothing changed (not confirmed)", EXIT_BAD_INPUT)


def delete(
    job_ids: Annotated[list[str], typer.Argument(help="Job ids whose stored results to remove.")],
    yes: bool = typer.Option(False, "--yes", "-y", help="Delete without asking."),
) -> None:
    """Remove stored results (readable or not) with their summaries and index entries.

    The way out for a record no command can read; the run keeps the job, now without a result."""
    ids = list(dict.fromkeys(job_ids))
    confirm(f"delete the stored result of {', '.join(ids)}?", yes)
    deleted = controller.store_for().delete_results(ids)
    note(one_line(f"deleted {len(deleted)} result(s): {', '.join(deleted)}"))
