#!/usr/bin/env bash
# One call on a lent GPU machine (see docs/performance.md): the GPU rows of gpu_check.py, then our model
# against transformers on 2 threads of the host's Xeon (AMX: the reference kind of CPU), then the
# LM-head loss alone. Each step has its own time limit; logs and tables go to $OUT (default ./out/gpu_host).
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
timeout 150 python3 benchmarks/gpu_check.py --skip-cpu --gpu-compile --out "$OUT/gc" > "$OUT/gpu_check.log" 2>&1
echo "gpu_check rc=$?"
timeout 330 python3 benchmarks/model_vs_hf.py --threads 2 --json "$OUT/vs_hf.json" > "$OUT/vs_hf.log" 2>&1
echo "model_vs_hf rc=$?"
timeout 60 python3 benchmarks/lm_head_loss.py --threads 2 --repeats 3 > "$OUT/lm_head_loss.log" 2>&1
echo "lm_head_loss rc=$?"
tail -n 30 "$OUT/gc/gpu_check.md" "$OUT/vs_hf.log" "$OUT/lm_head_loss.log"
