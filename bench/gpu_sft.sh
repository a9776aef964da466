#!/usr/bin/env bash
# bench/sft_throughput.py on one GPU, Qwen2-0.5B shape (seq 512, batch 16, bf16 autocast), on a machine
# without network that has torch, transformers, peft, accelerate, pyarrow, pandas but not trl/datasets.
#
# Carried in .whl/ (ignored through .git/info/exclude), fetched where pip works:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
#   .whl/opt/pyarrow-26.0.1.tar.xz       the unpacked pyarrow 26 wheel (datasets 5.2 needs pyarrow >= 24),
#                                         used only where the machine's pyarrow is older
#   .whl/opt/transformers-5.24.0.tar.xz  the unpacked transformers 5.24 wheel: genrec computes logits at
#                                         response tokens only from transformers 5.2x on; it is run a
#                                         second time with it when the machine's transformers is older
# Results: $OUT/gpu.json (and $OUT/gpu_tf524.json), merged here with
#   python bench/sft_throughput.py --merge gpu.json [gpu_tf524.json]
set -u
OUT=${OUT:-bench/work/gpu}
STEPS=${STEPS:-30}
DEVICE=${DEVICE:-cuda} SHAPE=${SHAPE:-qwen2-0.5b}  # DEVICE=cpu SHAPE=tiny: a dry run of this script
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_DATASETS_DISABLE_PROGRESS_BARS=1
exec > >(tee "$OUT/log") 2>&1

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
untar() { python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$1" "$2"; }
if ! python3 -c "import sys, pyarrow; sys.exit(int(pyarrow.__version__.split('.')[0]) < 24)"; then
    echo "pyarrow $(python3 -c 'import pyarrow; print(pyarrow.__version__)') < 24: using the carried pyarrow 26"
    untar .whl/opt/pyarrow-26.0.1.tar.xz /tmp/site
fi

nvidia-smi || true
python3 - <<'EOF'
import importlib.metadata as md, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "cuda", torch.version.cuda, "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")
for name in ["transformers", "trl", "datasets", "accelerate", "peft", "pyarrow", "fsspec", "huggingface-hub",
             "tokenizers", "dill", "multiprocess", "triton"]:
    try:
        print(f"  {name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name} MISSING")
import datasets, trl  # noqa: F401  fail here, visibly, rather than skip the TRL contenders
EOF

echo "=== main run: transformers $(python3 -c 'import transformers; print(transformers.__version__)')"
python3 bench/sft_throughput.py --device "$DEVICE" --shape "$SHAPE" --compile --steps "$STEPS" --timeout 200 \
    --out "$OUT/gpu.json"
cat "$OUT/gpu.json"

if python3 -c "import sys, transformers as t; sys.exit(int(t.__version__.split('.')[1]) >= 20)"; then
    echo "=== genrec again with transformers 5.24 (logits at response tokens only)"
    mkdir -p /tmp/tf524 && untar .whl/opt/transformers-5.24.0.tar.xz /tmp/tf524
    PYTHONPATH=/tmp/tf524:/tmp/site python3 bench/sft_throughput.py --device "$DEVICE" --shape "$SHAPE" --steps "$STEPS" \
        --timeout 200 --contenders genrec,genrec_compile --out "$OUT/gpu_tf524.json"
    cat "$OUT/gpu_tf524.json"
fi
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,temperature.gpu --format=csv || true
echo "=== done"
