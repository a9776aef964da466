#!/usr/bin/env bash
# bench/quality_gpu.py on one GPU (a machine with torch, transformers, peft, pyarrow; no Ray needed).
# Carry bench/work/seq/inputs, built here first by `python bench/quality_gpu.py inputs`.
# Results: $OUT/summary.json, one $OUT/<variant>.json per model, logs, and the best checkpoints.
set -u
OUT=${OUT:-bench/work/seq/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec > >(tee "$OUT/log") 2>&1
nvidia-smi --query-gpu=name,memory.total --format=csv || true
python3 -c "import torch, transformers, pyarrow; print('torch', torch.__version__, '| transformers', transformers.__version__, '| pyarrow', pyarrow.__version__)"
# TEST_USERS=-1: only the variant with the best validation HR@10 is scored on the test split.
# The weights go to CKPT_DIR, outside $OUT: too big to bring back; their metrics stay in the JSON.
python3 bench/quality_gpu.py run --out "$OUT" --ckpt-dir "${CKPT_DIR:-/tmp/quality_ckpt}" --train-s "${TRAIN_S:-240}" --epochs "${EPOCHS:-12}" \
    --variants "${VARIANTS:-h256l4,h384l6,h512l8,h384l6d}" --micro-batch-tokens "${MICRO_BATCH_TOKENS:-32768}" \
    --valid-users "${VALID_USERS:-3000}" --test-users "${TEST_USERS:--1}" --eval-batch "${EVAL_BATCH:-256}" \
    --eval-tokens "${EVAL_TOKENS:-40000}" --device "${DEVICE:-cuda}" --weights "${WEIGHTS:-best_loss}" \
    --scorings "${SCORINGS:-b20}" --deadline-s "${DEADLINE_S:-1000000000}" --test-limit "${TEST_LIMIT:-0}" \
    ${SKIP_TEST:+--skip-test}
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true
echo "=== done"
