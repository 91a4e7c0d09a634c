#!/usr/bin/env bash
# One call on a lent GPU machine (see docs/performance.md): the GPU rows of gpu_check.py, the GPU path
# through the farm (gpu_farm_check.sh), then our model against transformers on 2 threads of the host's
# Xeon (AMX: the reference kind of CPU), then the LM-head loss alone. Each step has its own time limit; logs and tables go to $OUT (default ./out/gpu_host).
# Missing Python packages (pydantic for farm.spec) are installed from ./.whl when that folder exists.
set -u
OUT=${OUT:-out/gpu_host}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 FARM_HOME=${FARM_HOME:-/tmp/farmhome}
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; lscpu | grep -E "Model name|^CPU\(s\)|Thread|amx") \
  > "$OUT/machine.txt" 2>&1
# The whole run stays under 10 minutes: each step gets its own cap, cut to what is left of 580 s.
limit() { local left=$((580 - SECONDS)); if [ "$1" -lt "$left" ]; then echo "$1"; else echo $((left > 1 ? left : 1)); fi; }
timeout "$(limit 130)" python3 benchmarks/gpu_check.py --skip-cpu --gpu-compile --out "$OUT/gc" > "$OUT/gpu_check.log" 2>&1
echo "gpu_check rc=$?"
# The GPU path through the farm (embedded Redis, a CPU and a CUDA worker, kill -9 mid-job, report):
# 360 s, its step limits (310 s) with `farm down` and the rest; 130 + 360 + 70 + 20 = 580 s in all.
OUT="$OUT/farm" timeout "$(limit 360)" benchmarks/gpu_farm_check.sh > "$OUT/gpu_farm_check.log" 2>&1
echo "gpu_farm_check rc=$?"
timeout "$(limit 70)" python3 benchmarks/model_vs_hf.py --threads 2 --json "$OUT/vs_hf.json" > "$OUT/vs_hf.log" 2>&1
echo "model_vs_hf rc=$?"
timeout "$(limit 30)" python3 benchmarks/lm_head_loss.py --threads 2 --repeats 3 > "$OUT/lm_head_loss.log" 2>&1
echo "lm_head_loss rc=$?"
tail -n 30 "$OUT/gc/gpu_check.md" "$OUT/farm/gpu_farm_check.md" "$OUT/vs_hf.log" "$OUT/lm_head_loss.log"
