"""Entry point of the `farm` console script: registers every command module on the app."""

from __future__ import annotations

from farm.cli import run as _run  # noqa: F401  (registers `farm run`)
from farm.cli.app import app


def main() -> None:
    app()


if __name__ == "__main__":
    main()
