#!/usr/bin/env bash
# One device run for bench/decode_speed.py (bench/work/decode/inputs.npz carried from --prepare).
set -u
nvidia-smi -L
common="bench/decode_speed.py --device cuda --shape qwen2-0.5b --prompt-len 200 --users 64 --batches 8,32 --budget-s 10"
timeout 80 python $common --out $OUT/gpu.json 2>&1 | grep -v "^ \|Warning\|deprecated" | tee $OUT/gpu.log
timeout 45 python $common --vocab 151936 --label gpu_vocab151936 --out $OUT/gpu_vocab151936.json 2>&1 | grep -v "^ \|Warning\|deprecated" | tee $OUT/gpu_vocab151936.log
