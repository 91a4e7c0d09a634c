#!/usr/bin/env bash
# The second call on a lent GPU machine (issues 16 and 17; the first is gpu_host_run.sh): the bf16 MFU
# ladder of the GPT-2 small train step, token generation on the GPU (prefill, decode tokens/s, MBU),
# the NVML sampler's cost against a real phase, and DDP scaling over the GPUs there are. Each step has
# its own time limit; logs and tables go to $OUT (default ./out/gpu_goals). The whole stays under 9.5 min.
set -u
OUT=${OUT:-out/gpu_goals}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 FARM_HOME=${FARM_HOME:-/tmp/farmhome-goals} PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
limit() { local left=$((560 - SECONDS)); if [ "$1" -lt "$left" ]; then echo "$1"; else echo $((left > 1 ? left : 1)); fi; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv > "$OUT/machine.txt" 2>&1
timeout "$(limit 300)" python3 benchmarks/gpu_mfu_ladder.py --batch 16 --repeats 10 --out "$OUT/ladder" > "$OUT/ladder.log" 2>&1
echo "ladder rc=$?"
for b in 1 8; do
  timeout "$(limit 60)" python3 -m farm.cli.main run --model gpt2 --phases generate --devices cuda --batch "$b" \
    --seq 128 --gen-tokens 128 --repeats 3 --json > "$OUT/generate_b$b.json" 2> "$OUT/generate_b$b.log"
  echo "generate batch $b rc=$?"
done
timeout "$(limit 70)" python3 benchmarks/telemetry_overhead.py --gpu --model gpt2 --batch 8 --seq 1024 --rounds 6 \
  > "$OUT/telemetry_overhead.log" 2>&1
echo "telemetry_overhead rc=$?"
timeout "$(limit 60)" python3 benchmarks/ddp_scaling.py --device cuda --model gpt2 --batch 8 --seq 1024 --repeats 5 \
  --json "$OUT/ddp.json" > "$OUT/ddp.log" 2>&1
echo "ddp_scaling rc=$?"
tail -n 20 "$OUT/ladder/ladder.md" "$OUT/telemetry_overhead.log" "$OUT/ddp.log"
python3 - "$OUT" <<'PY'
import json, sys, pathlib
for p in sorted(pathlib.Path(sys.argv[1]).glob("generate_b*.json")):
    try:
        res = json.loads(p.read_text())[0]
        g = res["phases"]["generate"]
        print(p.name, res["status"], {k: g["generate"].get(k) for k in ("prefill_s", "decode_tokens_per_s", "token_p50_s", "token_p99_s", "bytes_per_token", "mbu")})
    except Exception as e:  # a failed run is a line, not the end of the summary
        print(p.name, "unreadable:", type(e).__name__, e)
PY
