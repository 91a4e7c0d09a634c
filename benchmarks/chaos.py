"""The chaos round (issue 24) repeated over several seeds, with a table of its counts.

Each round: at least 200 small jobs over 4 real `farm worker`s on two network-namespace hosts while
a schedule drawn from its seed SIGKILLs two workers (and restarts them), cuts a worker host off from
Redis for longer than the visibility timeout mid-job, and kill -9s Redis and starts it again on its
append-only file (tests/chaos.py has the driver; tests/test_chaos.py runs one seed in CI).

    sudo .venv/bin/python benchmarks/chaos.py --seeds 5            # seeds 1..5, 200 jobs each
    sudo .venv/bin/python benchmarks/chaos.py --seeds 3,17 --jobs 300

Needs root, iproute2 and redis-server. Prints one Markdown table row per seed (seed, jobs, results,
ok, failed by cause, duplicates, lost, queued left, kills, cuts, redis restarts, redelivered, wall
time of the whole round); exit 1 when any round failed its checks (the problems are printed).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

# tests/chaos.py, the round's driver shared with the test, loaded by path: this script is `chaos` too.
_spec = importlib.util.spec_from_file_location("chaos_round", Path(__file__).resolve().parent.parent / "tests/chaos.py")
assert _spec is not None and _spec.loader is not None
chaos = importlib.util.module_from_spec(_spec)
sys.modules["chaos_round"] = chaos  # before it runs: its dataclasses look their module up
_spec.loader.exec_module(chaos)


def seeds_of(text: str) -> list[int]:
    """`5` is seeds 1..5; `3,17` is those two."""
    if "," in text:
        return [int(s) for s in text.split(",") if s.strip()]
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("--seeds: at least 1")
    return list(range(1, n + 1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Repeat the chaos round over several seeds and print its counts.")
    ap.add_argument("--seeds", type=seeds_of, default=seeds_of("5"), help="a count (1..N) or a comma list (default 5)")
    ap.add_argument("--jobs", type=int, default=200, help="jobs per round (at least 200 for a passing round)")
    ap.add_argument("--out", type=Path, default=None, help="directory for each round's logs and a JSON of the reports")
    args = ap.parse_args(argv)
    if (why := chaos.unavailable()) is not None:
        print(f"chaos round not possible here: {why}", file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="farm-chaos-"))
    reports = []
    for seed in args.seeds:
        print(f"seed {seed}: {args.jobs} jobs ...", file=sys.stderr, flush=True)
        rep = chaos.run_round(seed, args.jobs, out / f"seed-{seed}")
        reports.append(rep)
        print(f"seed {seed}: {'passed' if rep.passed else 'FAILED'} in {rep.wall_s} s", file=sys.stderr, flush=True)
    (out / "reports.json").write_text(json.dumps([asdict(r) for r in reports], indent=1))
    print(chaos.table(reports))
    print(f"\nlogs and reports: {out}")
    failed = [r for r in reports if not r.passed]
    for r in failed:
        print(f"\nseed {r.seed} failed:", *r.problems, *map(str, r.bad_results), sep="\n  ")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
