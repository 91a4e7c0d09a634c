"""The Typer app every command module registers on, and the shared consoles."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

app = typer.Typer(
    name="farm",
    help="Time GPT-2 models on CPUs and GPUs: build (init), forward and train, honestly.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Tables and results go to stdout; progress, warnings and errors to stderr, so that
# `--json` output on stdout stays machine-readable.
# Piped output gets a wide console: Rich's 80-column default would fold the tables.
out = Console(soft_wrap=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        from farm import __version__

        out.print(f"farm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Time GPT-2 models on CPUs and GPUs: build (init), forward and train, honestly."""
