"""How long the `farm` console script takes to start, against `celery --version` on the same machine.

    python benchmarks/cli_startup.py              # 5 runs of each command, median wall time
    python benchmarks/cli_startup.py --runs 9

Each command runs as a fresh process (the venv's console scripts next to this interpreter: `farm`,
`celery`), in the current directory, one after another, interleaved round by round so that a busy
neighbour slows every command alike. To time another tree of the package side by side (say, the
last commit's, exported with `git archive`), run from outside the checkout with
`PYTHONPATH=/that/tree`: it comes before the editable install. The table gives each command's
median wall time and its ratio to `celery --version` (Celery's own import and argument parsing,
the floor a Celery-based CLI is compared with).
Goal (issue 27): `farm --version` / `--help` at most 0.75 x `celery --version`.
Also printed: `import farm.cli.main` alone, and which heavy libraries that import loads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from farm.engine.hardware import fingerprint

BIN = Path(sys.executable).parent
HEAVY = ("scipy", "matplotlib", "pandas", "numpy", "torch", "jinja2", "celery", "kombu", "redis")


def commands() -> list[tuple[str, list[str]]]:
    farm, celery = str(BIN / "farm"), str(BIN / "celery")
    return [
        ("farm --version", [farm, "--version"]),
        ("farm --help", [farm, "--help"]),
        ("farm status --help", [farm, "status", "--help"]),
        ("farm results --help", [farm, "results", "--help"]),
        ("python -c 'import farm.cli.main'", [sys.executable, "-c", "import farm.cli.main"]),
        ("celery --version", [celery, "--version"]),
    ]


def time_once(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return elapsed


def heavy_modules(env: dict[str, str]) -> list[str]:
    code = f"import sys, farm.cli.main; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return proc.stdout.split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each command (median reported)")
    args = parser.parse_args()
    env = dict(os.environ)
    cmds = commands()
    for _, argv in cmds:  # warm-up: byte-code caches and the page cache, not timed
        time_once(argv, env)
    times: dict[str, list[float]] = {name: [] for name, _ in cmds}
    for _ in range(args.runs):
        for name, argv in cmds:
            times[name].append(time_once(argv, env))
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    ref = medians["celery --version"]
    print(
        f"CLI startup on {fingerprint(with_torch=False).cpu_model} ({os.cpu_count()} CPUs), "
        f"Python {sys.version.split()[0]}, median of {args.runs}"
    )
    print()
    print("| command | median s | min s | x celery --version |")
    print("| ------- | -------: | ----: | -----------------: |")
    for name, _ in cmds:
        print(f"| `{name}` | {medians[name]:.3f} | {min(times[name]):.3f} | {medians[name] / ref:.2f} |")
    print()
    loaded = heavy_modules(env)
    print(f"heavy modules loaded by `import farm.cli.main`: {', '.join(loaded) if loaded else 'none'}")


if __name__ == "__main__":
    main()
