"""Entry point of the `farm` console script: registers every command module on the app."""

from __future__ import annotations

# Each import registers its commands on `app` (one module per concept).
from farm.cli import farm_cmds as _farm_cmds  # noqa: F401  submit, status, workers, results, cancel, worker, up, down
from farm.cli import report_cmds as _report_cmds  # noqa: F401  report, compare, diff, import
from farm.cli import run as _run  # noqa: F401  run
from farm.cli import sweep_cmds as _sweep_cmds  # noqa: F401  sweep, schedule, beat, regressions, check
from farm.cli.app import app


def main() -> None:
    app()


if __name__ == "__main__":
    main()
