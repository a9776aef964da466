#!/usr/bin/env bash
# One device run: genrec's rollout generator vs transformers' generate, 64 prompts x 256 new tokens,
# Qwen2-0.5B-shaped random-init model in bf16 (needs torch + transformers only: no Ray, no network).
# Writes $OUT/ppo_rollout_gpu.json and its .log; a tiny-shape smoke run first so a broken setup fails fast.
# The JSON is committed as bench/results/ppo_rollout_gpu.json (the log stays out of git); then
# `python bench/ppo_throughput.py --render` renders it as the GPU section of ppo_throughput.md.
set -u
OUT=${OUT:-bench/work/gpu_ppo_rollout}
mkdir -p "$OUT"
nvidia-smi -L 2>/dev/null || true
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
timeout ${SMOKE_TIMEOUT:-60} $PY bench/gpu_ppo_rollout.py --shape tiny --prompts 8 --new-tokens 32 --repeats 1 \
    --out "$OUT/ppo_rollout_gpu_smoke.json" 2>&1 | grep -v "Warning\|warn(" | tee "$OUT/ppo_rollout_gpu_smoke.log"
timeout ${MAIN_TIMEOUT:-200} $PY bench/gpu_ppo_rollout.py --shape "${SHAPE:-qwen2-0.5b}" --prompts "${PROMPTS:-64}" \
    --new-tokens "${NEW_TOKENS:-256}" --repeats 2 --out "$OUT/ppo_rollout_gpu.json" 2>&1 \
    | grep -v "Warning\|warn(" | tee "$OUT/ppo_rollout_gpu.log"
