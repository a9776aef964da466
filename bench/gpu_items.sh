#!/usr/bin/env bash
# bench/quality_items.py (genrec's item_tokens model on Amazon Toys) on one GPU, no Ray needed.
# Carry bench/work/items/inputs, built here first by `python bench/quality_items.py inputs`.
# VARIANTS: name:hidden:layers:heads[:lr], each trained in its own process at once (tiny models
# leave a GPU mostly idle). Results: $OUT/<name>/result.json and $OUT/<name>.log.
set -u
OUT=${OUT:-bench/work/items/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv || true
pids=()
for spec in ${VARIANTS:-h64l2:64:2:2 h256l4:256:4:4}; do
    IFS=: read -r name hidden layers heads lr <<< "$spec"
    python3 bench/quality_items.py run --device cuda --hidden "$hidden" --layers "$layers" --heads "$heads" \
        --lr "${lr:-0.002}" --weight-decay "${WEIGHT_DECAY:-0}" --epochs "${EPOCHS:-30}" --micro-batch-tokens "${MICRO_BATCH_TOKENS:-16384}" \
        --valid-users "${VALID_USERS:-4000}" --evals "${EVALS:-10}" --out "$OUT/$name" > "$OUT/$name.log" 2>&1 &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
grep -h '^test' "$OUT"/*.log
echo "=== done"
