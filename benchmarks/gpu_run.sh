#!/usr/bin/env bash
# The ONE call on a lent GPU machine (issue 23). A session lent a GPU has 15 minutes of device time in
# all, start-up included, so everything the GPU is needed for is one command of at most 420 s of wall
# time on one GPU (it replaces gpu_host_run.sh, about 580 s, and gpu_goals_run.sh, about 560 s):
#
#   bash benchmarks/gpu_run.sh                  # $OUT: out/gpu_run by default
#
# Steps, in order of value; each has its own limit (seconds), cut to what is left of the 420 s:
#   farm       195  the seed's experiment through the farm on cuda: benchmarks/gpu_farm_check.sh with
#                   up 55 (embedded Redis, a CPU and a CUDA worker), seed 90 (farm submit --model gpt2
#                   --phases all --devices cpu,cuda --batch 8 --seq 1024 --wait), report 10 + 10 (HTML,
#                   Markdown), farm down 15, and 10 for `farm workers`: 190, and 5 for the rest.
#                   Left out there (FARM_CHECK_SKIP): fanout, 40 s, and kill9, 80 s. On one GPU `cuda:*`
#                   resolves to the GPU the seed's cuda job already ran on (the same path again), and a
#                   job's process killed with SIGKILL, delivered again and stored once is the worker
#                   pool's property, not CUDA's: tests/test_gpu_farm_check.py runs it on the CPU. Their
#                   120 s buy the ladder and generate; gpu_farm_check.sh alone still runs all five steps.
#   ladder     120  the train step's MFU ladder, fewest rungs that tell the story (gpu_mfu_ladder.py
#                   --rungs fp32,bf16,bf16+compile,best): strict fp32, bf16 autocast, + torch.compile,
#                   and the best combination (+ padded vocabulary, twice the batch)
#   generate 2 x 25 prefill, decode tokens/s and MBU on the GPU (farm run --phases generate), batch 1, 8
#   telemetry   35  the NVML sampler's cost against a real GPU phase (telemetry_overhead.py --gpu)
#   reserve     20  the .whl install, the machine's facts, the summary         195+120+50+35+20 = 420
#
# Without a GPU (no nvidia-smi naming one) the CUDA steps (ladder, generate, telemetry) are skipped
# with a line each and the seed runs on the CPU at toy size (gpt2-tiny, 1 x 64: FARM_CHECK_* below),
# in well under a minute. GPU_RUN_CPU_SMOKE=1 runs the CUDA steps on the CPU at toy sizes instead: a
# test of this script and its summary, not a measurement.
#
# $OUT gets at most 8 files: summary.md (every table: machine, steps with rc and seconds, the farm's
# check and report tables, the ladder, generate, the sampler's cost), gpu_run.log (every step's log,
# one after another), farm_seed.json, report.html, ladder.json, generate_b1.json, generate_b8.json. The
# rest (the farm's home, its many files) stays in a scratch directory that is removed at the end. The
# summary is printed last. Exit status: 0 when every step that ran passed, 1 otherwise. Missing Python
# packages (pydantic for farm.spec) are installed from ./.whl when that folder exists.
set -u
TOTAL_S=420 RESERVE_S=20 SUMMARY_S=5
FARM_S=195 LADDER_S=120 GENERATE_S=25 TELEMETRY_S=35
GEN_BATCHES="1 8" RUNGS=fp32,bf16,bf16+compile,best
# The farm step's own limits (gpu_farm_check.sh): 55 + 90 + 2 x 10 + 15 + 10 = 190 <= FARM_S.
export FARM_CHECK_UP_S=55 FARM_CHECK_SEED_S=90 FARM_CHECK_REPORT_S=10 FARM_CHECK_DOWN_S=15
export FARM_CHECK_SKIP="fanout kill9"
n_gen=$(wc -w <<<"$GEN_BATCHES")
CAPS_S=$((FARM_S + LADDER_S + GENERATE_S * n_gen + TELEMETRY_S))
if [ $((CAPS_S + RESERVE_S)) -gt "$TOTAL_S" ]; then
  echo "gpu_run: the step limits ($CAPS_S s) and the reserve ($RESERVE_S s) exceed the $TOTAL_S s" >&2
  exit 2
fi

OUT=${OUT:-out/gpu_run}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/gpu_run.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
LOG="$OUT/gpu_run.log"
: >"$LOG"
rm -f "$OUT/summary.md" "$OUT/farm_seed.json" "$OUT/report.html" "$OUT/ladder.json" "$OUT"/generate_b*.json

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >>"$LOG" 2>&1 && export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" FARM_HOME="$SCRATCH/home"
export PYTHON="$PY" FARM="$PY -m farm.cli.main"
unset FARM_REDIS_URL FARM_BROKER_URL FARM_RESULTS_URL

# Each cap cut to what is left of the 420 s, less the summary's few seconds.
limit() { local left=$((TOTAL_S - SUMMARY_S - SECONDS)); if [ "$1" -lt "$left" ]; then echo "$1"; else echo $((left > 1 ? left : 1)); fi; }

# The machine: GPU name, memory, driver (and clocks, power limit); the CPU.
timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv \
  >"$SCRATCH/gpu.csv" 2>/dev/null || : >"$SCRATCH/gpu.csv"
lscpu 2>/dev/null | grep -E "^Model name|^CPU\(s\)|^Thread|^Socket" >"$SCRATCH/cpu.txt"
if [ "$(wc -l <"$SCRATCH/gpu.csv")" -ge 2 ]; then
  MODE=gpu
elif [ "${GPU_RUN_CPU_SMOKE:-0}" = 1 ]; then
  MODE=smoke
else
  MODE=none
fi
echo "gpu_run: mode $MODE (gpu: GPT-2 small on cuda; none: CUDA steps skipped; smoke: CUDA steps on the CPU at toy sizes)"

# The shapes: GPT-2 small on a GPU; toys without one.
if [ "$MODE" = gpu ]; then
  DEV=cuda L_MODEL=gpt2 L_BATCH=16 L_SEQ=1024 L_REPEATS=5 L_WARMUP=2
  G_MODEL=gpt2 G_SEQ=128 G_TOKENS=128 G_REPEATS=3
  T_MODEL=gpt2 T_BATCH=8 T_SEQ=1024 T_ROUNDS=6 T_REPEATS=20 T_SAMPLES=2000
else
  : "${FARM_CHECK_MODEL:=gpt2-tiny}" "${FARM_CHECK_BATCH:=1}" "${FARM_CHECK_SEQ:=64}" "${FARM_CHECK_REPEATS:=2}"
  export FARM_CHECK_MODEL FARM_CHECK_BATCH FARM_CHECK_SEQ FARM_CHECK_REPEATS
  DEV=cpu L_MODEL=gpt2-tiny L_BATCH=1 L_SEQ=32 L_REPEATS=2 L_WARMUP=0 # smoke: rungs fp32,bf16 (no compile)
  G_MODEL=gpt2-tiny G_SEQ=16 G_TOKENS=8 G_REPEATS=1
  T_MODEL=gpt2-tiny T_BATCH=1 T_SEQ=32 T_ROUNDS=2 T_REPEATS=2 T_SAMPLES=200
fi

failed=0
: >"$SCRATCH/steps.tsv"
record() { # step what rc seconds limit
  printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$SCRATCH/steps.tsv"
}
run_step() { # step what limit stdout-file command...: stderr (and stdout when the file is -) to the log
  local name=$1 what=$2 cap out=$4 t0=$SECONDS rc
  cap=$(limit "$3")
  shift 4
  if [ "$out" = - ]; then
    timeout "$cap" "$@" >"$SCRATCH/$name.log" 2>&1
  else
    timeout "$cap" "$@" >"$out" 2>"$SCRATCH/$name.log"
  fi
  rc=$?
  record "$name" "$what" "$rc" $((SECONDS - t0)) "$cap"
  { echo "===== $name: $what: rc=$rc, $((SECONDS - t0)) s (limit $cap s): $*"; cat "$SCRATCH/$name.log"; } >>"$LOG"
  echo "gpu_run: $name: rc=$rc ($((SECONDS - t0)) s, limit $cap s)"
  if [ "$rc" != 0 ]; then failed=1; fi
  return "$rc"
}
skip_step() { # step what why
  record "$1" "$2" skipped 0 -
  echo "===== $1: $2: skipped: $3" >>"$LOG"
  echo "gpu_run: $1: skipped: $3"
}
cuda_step() { # true when the CUDA steps run (a GPU, or the CPU smoke mode), else one line saying so
  if [ "$MODE" = none ]; then skip_step "$1" "$2" "no GPU here (nvidia-smi names none): CUDA step skipped"; return 1; fi
}

# 1. The seed's experiment through the farm (its scratch OUT: the farm's many files stay out of $OUT).
run_step farm "seed through the farm ($FARM_CHECK_SKIP left out)" "$FARM_S" - \
  env OUT="$SCRATCH/farm" bash benchmarks/gpu_farm_check.sh
if [ -s "$SCRATCH/farm/home/embedded.json" ] && ! grep -q stopped "$SCRATCH/farm/down.log" 2>/dev/null; then
  FARM_HOME="$SCRATCH/farm/home" timeout 15 "$PY" -m farm.cli.main down >>"$LOG" 2>&1 # cut off before its own down
fi
cp "$SCRATCH/farm/seed.out" "$OUT/farm_seed.json" 2>/dev/null
cp "$SCRATCH/farm/report.html" "$OUT/report.html" 2>/dev/null

# 2. The train step's MFU ladder.
if cuda_step ladder "MFU ladder ($RUNGS)"; then
  if [ "$MODE" = smoke ]; then RUNGS=fp32,bf16; fi # torch.compile on 2 CPU cores takes minutes
  run_step ladder "MFU ladder ($RUNGS)" "$LADDER_S" - \
    "$PY" benchmarks/gpu_mfu_ladder.py --device "$DEV" --model "$L_MODEL" --batch "$L_BATCH" --seq "$L_SEQ" \
    --repeats "$L_REPEATS" --warmup "$L_WARMUP" --rungs "$RUNGS" --out "$SCRATCH/ladder"
  cp "$SCRATCH/ladder/ladder.json" "$OUT/ladder.json" 2>/dev/null
fi

# 3. Generate on the GPU: prefill, decode tokens/s, MBU.
for b in $GEN_BATCHES; do
  if cuda_step "generate_b$b" "generate, batch $b"; then
    run_step "generate_b$b" "generate, batch $b" "$GENERATE_S" "$OUT/generate_b$b.json" \
      "$PY" -m farm.cli.main run --model "$G_MODEL" --phases generate --devices "$DEV" --batch "$b" \
      --seq "$G_SEQ" --gen-tokens "$G_TOKENS" --repeats "$G_REPEATS" --json
  fi
done

# 4. The NVML sampler's cost.
if cuda_step telemetry "NVML sampler cost"; then
  run_step telemetry "NVML sampler cost" "$TELEMETRY_S" - \
    "$PY" benchmarks/telemetry_overhead.py --gpu --model "$T_MODEL" --batch "$T_BATCH" --seq "$T_SEQ" \
    --rounds "$T_ROUNDS" --repeats "$T_REPEATS" --samples "$T_SAMPLES"
fi

# The summary: every table in one Markdown file, printed last.
SUMMARY="$OUT/summary.md"
MODE=$MODE SECONDS_NOW=$SECONDS TOTAL_S=$TOTAL_S "$PY" - "$SCRATCH" "$OUT" >"$SUMMARY" 2>>"$LOG" <<'PY' ||
import csv, json, os, sys
from pathlib import Path

scratch, out = Path(sys.argv[1]), Path(sys.argv[2])


def text(p: Path) -> str:
    try:
        return p.read_text()
    except OSError:
        return ""


def f(x, spec):
    return "-" if x is None else format(x, spec)


mode = os.environ["MODE"]
print("# GPU run summary (benchmarks/gpu_run.sh)\n")
note = {"gpu": "GPT-2 small on the GPU", "none": "no GPU: CUDA steps skipped, the seed on the CPU at toy size",
        "smoke": "no GPU: the CUDA steps on the CPU at toy sizes (a test of the script, not a measurement)"}[mode]
print(f"Mode: {mode} ({note}); wall time {os.environ['SECONDS_NOW']} s of the {os.environ['TOTAL_S']} s allowed.\n")

print("## Machine\n")
rows = list(csv.reader(text(scratch / "gpu.csv").splitlines()))
if len(rows) >= 2:
    print("| " + " | ".join(c.strip() for c in rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for r in rows[1:]:
        print("| " + " | ".join(c.strip() for c in r) + " |")
else:
    print("GPU: none (nvidia-smi names none)")
print()
for line in text(scratch / "cpu.txt").splitlines():
    k, _, v = line.partition(":")
    print(f"- {k.strip()}: {v.strip()}")
try:
    m = json.loads(text(out / "farm_seed.json"))["results"][0]["machine"]
    print(f"- torch {m.get('torch_version')}, CUDA {m.get('cuda_version')}, farm {m.get('farm_version')}"
          f" (git {m.get('git_commit') or '-'})")
except Exception:
    pass
print()

print("## Steps\n")
print("| step | what | rc | seconds | limit s |")
print("|---|---|---|---|---|")
for line in text(scratch / "steps.tsv").splitlines():
    print("| " + " | ".join(line.split("\t")) + " |")
print()

print("## 1. The seed's experiment through the farm (gpu_farm_check.sh)\n")
print(text(scratch / "farm" / "gpu_farm_check.md") or "no table (see gpu_run.log)")
report = text(scratch / "farm" / "report.md")
if report:
    print("### The farm's report of the seed run\n")
    print("\n".join("###" + ln if ln.startswith("#") else ln for ln in report.splitlines()))
print()

print("## 2. The train step's MFU ladder (gpu_mfu_ladder.py)\n")
print(text(scratch / "ladder" / "ladder.md") or "skipped or no rung finished (see the steps table and gpu_run.log)")
print()

print("## 3. Generate (farm run --phases generate)\n")
gens = sorted(out.glob("generate_b*.json"), key=lambda p: int(p.stem.removeprefix("generate_b")))
if gens:
    print("| batch | device | status | prefill s | decode tokens/s | token p50 ms | token p99 ms | MB/token | MBU | bandwidth ceiling |")
    print("|---|---|---|---|---|---|---|---|---|---|")
for p in gens:
    b = p.stem.removeprefix("generate_b")
    try:
        res = json.loads(p.read_text())[0]
        ph = res["phases"]["generate"]
        g = ph.get("generate") or {}
        status = ph.get("status") or res["status"]
        if ph.get("error") or res.get("error"):
            status += f": {str(ph.get('error') or res.get('error'))[:80]}"
        p50, p99, bpt = g.get("token_p50_s"), g.get("token_p99_s"), g.get("bytes_per_token")
        print(f"| {b} | {res.get('device')} | {status} | {f(g.get('prefill_s'), '.4f')} "
              f"| {f(g.get('decode_tokens_per_s'), ',.1f')} | {f(p50 and p50 * 1e3, '.2f')} "
              f"| {f(p99 and p99 * 1e3, '.2f')} | {f(bpt and bpt / 1e6, ',.1f')} | {f(g.get('mbu'), '.1%')} "
              f"| {g.get('bandwidth_source') or '-'} |")
    except Exception as e:  # a failed run is a row, not the end of the summary
        print(f"| {b} | - | unreadable: {type(e).__name__} | - | - | - | - | - | - | - |")
if not gens:
    print("skipped (see the steps table)")
print()

print("## 4. The NVML sampler's cost (telemetry_overhead.py --gpu)\n")
lines = [ln for ln in text(scratch / "telemetry.log").splitlines() if ln.strip()]
print("\n".join(f"- {ln.strip()}" for ln in lines) if lines else "skipped (see the steps table)")
PY
  { echo "# GPU run summary (benchmarks/gpu_run.sh): the summary writer failed (see gpu_run.log)"; echo; cat "$SCRATCH/steps.tsv"; } >"$SUMMARY"
echo
cat "$SUMMARY"
exit "$failed"
