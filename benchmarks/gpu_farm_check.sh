#!/usr/bin/env bash
# The GPU path through the farm, end to end, on one machine: one table of what happened, in $OUT.
#
#   OUT=out/gpu_farm benchmarks/gpu_farm_check.sh
#
# Steps, each with its own time limit (seconds; by default they add up to 310, and with the untimed
# rest and `farm down` the whole stays under 6 minutes):
#   up      80  the embedded farm: a private redis-server, one CPU worker and one CUDA worker per GPU
#   seed    90  farm submit --model gpt2 --phases all --devices cpu,cuda --batch 8 --seq 1024 --wait
#               (it gives up 5 s before its limit, so a slow CPU job still leaves the run for the report)
#   fanout  40  farm submit --devices 'cuda:*' --wait (one job per GPU model a live worker serves)
#   kill9   80  a long CUDA job whose process is killed with SIGKILL mid-job: delivered again, stored once
#   report  20  the report of the seed run: report.html, then the same as Markdown (report.md), 20 s each
# Without a CUDA worker (no GPU, no driver) the CUDA steps are skipped with a message; the seed runs
# on the CPU and the kill -9 step kills a CPU job instead. FARM_CHECK_MODEL / _BATCH / _SEQ /
# _REPEATS shrink the seed's shape (the CPU test uses gpt2-tiny). FARM_CHECK_UP_S / _SEED_S / _FANOUT_S /
# _KILL9_S / _REPORT_S / _DOWN_S set the limits, and FARM_CHECK_SKIP (e.g. "fanout kill9") leaves steps
# out (a `skipped` row each): benchmarks/gpu_run.sh runs up, seed and report only. Exit status: 0 when
# every step that ran passed, 1 otherwise. FARM: the farm command (default `farm`, else python3 -m farm.cli.main).
set -u
OUT=${OUT:-out/gpu_farm}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
MODEL=${FARM_CHECK_MODEL:-gpt2}
BATCH=${FARM_CHECK_BATCH:-8}
SEQ=${FARM_CHECK_SEQ:-1024}
REPEATS=${FARM_CHECK_REPEATS:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export FARM_HOME="$OUT/home" # a farm of its own: never the user's embedded farm or Redis
unset FARM_REDIS_URL FARM_BROKER_URL FARM_RESULTS_URL
if [ -z "${FARM:-}" ]; then
  if command -v farm >/dev/null; then FARM=farm; else FARM="python3 -m farm.cli.main"; fi
fi
PY=${PYTHON:-python3}
read -r -a farm <<<"$FARM"

TABLE="$OUT/gpu_farm_check.md"
printf '| step | result | seconds | detail |\n| --- | --- | ---: | --- |\n' >"$TABLE"
failed=0
row() { # step result seconds detail
  printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" >>"$TABLE"
  echo "gpu_farm_check: $1: $2 ($3 s) $4"
  if [ "$2" = failed ]; then failed=1; fi
}
step() { # name limit_s command...: runs it with a time limit, stdout/stderr to $OUT/<name>.{json,log}
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.out" 2>"$OUT/$name.log"
  local rc=$?
  echo $((SECONDS - t0)) >"$OUT/$name.seconds"
  return $rc
}
secs() { cat "$OUT/$1.seconds"; }
# The step limits (see the top): 310 s by default; with DOWN_S and the rest, under 6 minutes.
UP_S=${FARM_CHECK_UP_S:-80} SEED_S=${FARM_CHECK_SEED_S:-90} FANOUT_S=${FARM_CHECK_FANOUT_S:-40}
REPORT_S=${FARM_CHECK_REPORT_S:-20} DOWN_S=${FARM_CHECK_DOWN_S:-30}
export KILL9_S=${FARM_CHECK_KILL9_S:-80} # kill9.py fits its waits in it
SKIP=" ${FARM_CHECK_SKIP:-} "
skipped() { case "$SKIP" in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() { timeout "$DOWN_S" "${farm[@]}" down >"$OUT/down.log" 2>&1; }
trap cleanup EXIT

(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "nvidia-smi: none"
  lscpu | grep -E "Model name|^CPU\(s\)") >"$OUT/machine.txt" 2>&1

if step up "$UP_S" "${farm[@]}" up; then
  row up ok "$(secs up)" "$(grep -c '  worker' "$OUT/up.out") worker(s)"
else
  row up failed "$(secs up)" "see up.log"
  exit 1
fi
timeout 10 "${farm[@]}" workers --json >"$OUT/workers.json" 2>/dev/null
cuda=$($PY -c 'import json,sys; print(int(any(w["device"] == "cuda" for w in json.load(open(sys.argv[1])))))' \
  "$OUT/workers.json" 2>/dev/null || echo 0)
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
devices=cpu
if [ "$cuda" = 1 ]; then devices=cpu,cuda; fi

# The seed's experiment through the farm.
seed=(submit --model "$MODEL" --phases all --devices "$devices" --batch "$BATCH" --seq "$SEQ")
seed+=(--repeats "$REPEATS" --wait --json --unserved-after 30 --timeout $((SEED_S > 10 ? SEED_S - 5 : SEED_S)))
if step seed "$SEED_S" "${farm[@]}" "${seed[@]}"; then
  row seed ok "$(secs seed)" "$MODEL ${BATCH}x$SEQ on $devices"
else
  row seed failed "$(secs seed)" "exit $? (see seed.log)"
fi
if skipped fanout; then
  row fanout skipped 0 "left out (FARM_CHECK_SKIP)"
elif [ "$cuda" = 1 ]; then
  if step fanout "$FANOUT_S" "${farm[@]}" submit --model "$MODEL" --phases forward --devices 'cuda:*' --batch "$BATCH" \
    --seq "$SEQ" --repeats "$REPEATS" --wait --json; then
    row fanout ok "$(secs fanout)" "cuda:* on ${gpu:-?}"
  else
    row fanout failed "$(secs fanout)" "see fanout.log"
  fi
else
  echo "gpu_farm_check: no CUDA worker here: skipping the CUDA steps (fanout; kill9 runs on the CPU)"
  row fanout skipped 0 "no CUDA worker"
fi

# kill -9 the job's process mid-job: the pool replaces it, the message is delivered again, one result.
kdev=cpu
if [ "$cuda" = 1 ]; then kdev=cuda; fi
cat >"$OUT/kill9.py" <<'EOF'
"""Queue a long job, SIGKILL its process once it is timing, follow it to its one stored result."""
import json, os, shlex, signal, subprocess, sys, time
from farm.cluster.controller import store_for

farm = shlex.split(os.environ["FARM_CMD"])
shape = ["--model", os.environ["MODEL"], "--batch", os.environ["BATCH"], "--seq", os.environ["SEQ"]]
args = ["submit", *shape, "--phases", "forward", "--devices", os.environ["KDEV"], "--warmup", "0"]
run = subprocess.run([*farm, *args, "--repeats", os.environ["KILL_REPEATS"]], capture_output=True, text=True, check=True)
run_id = run.stdout.strip()
store, job = store_for(), f"{run_id}-000"
end = time.monotonic() + float(os.environ["KILL9_S"]) - 10  # 10 s left for `farm results` and the exit
deadline = min(end, time.monotonic() + 0.5 * float(os.environ["KILL9_S"]))
while time.monotonic() < deadline and not (store.job_field(job, "phase") == "forward" and store.job_field(job, "done")):
    time.sleep(0.1)
pid = int(store.job_field(job, "pid") or 0)
assert pid > 0, "the job never ran"
os.kill(pid, signal.SIGKILL)
print(f"killed pid {pid} of {job} at repeat {store.job_field(job, 'done')}", file=sys.stderr)
while time.monotonic() < end and not store.has_result(job):
    time.sleep(0.5)
res = json.loads(subprocess.run([*farm, "results", run_id, "--json"], capture_output=True, text=True, timeout=8).stdout)
attempts = int(store.job_field(job, "attempts") or 0)
print(f"{len(res)} result(s) {[r['status'] for r in res]} after {attempts} deliveries")
sys.exit(0 if len(res) == 1 and attempts >= 2 and res[0]["status"] in ("ok", "invalid") else 1)
EOF
if skipped kill9; then
  row kill9 skipped 0 "left out (FARM_CHECK_SKIP)"
elif FARM_CMD="$FARM" MODEL=$MODEL BATCH=$BATCH SEQ=$SEQ KDEV=$kdev KILL_REPEATS=${FARM_CHECK_KILL_REPEATS:-400} \
  step kill9 "$KILL9_S" "$PY" "$OUT/kill9.py"; then
  row kill9 ok "$(secs kill9)" "$kdev: $(tail -n 1 "$OUT/kill9.out")"
else
  row kill9 failed "$(secs kill9)" "$kdev: $(tail -n 1 "$OUT/kill9.out" 2>/dev/null) (see kill9.log)"
fi

seed_run=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["run_id"])' "$OUT/seed.out" 2>/dev/null)
if [ -n "$seed_run" ] && step report "$REPORT_S" "${farm[@]}" report "$seed_run" --format html -o "$OUT/report.html" &&
  timeout "$REPORT_S" "${farm[@]}" report "$seed_run" --format markdown -o "$OUT/report.md" >>"$OUT/report.log" 2>&1; then
  row report ok "$(secs report)" "report.html, report.md"
else
  row report failed "$(secs report 2>/dev/null || echo 0)" "${seed_run:-no seed run id}: $(tail -n 1 "$OUT/report.log" 2>/dev/null | tr "|" /) (see report.log)"
fi

echo
cat "$TABLE"
exit "$failed"
