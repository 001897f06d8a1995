#!/usr/bin/env bash
# Every GPU check of issue #5 in one go, for a machine with CUDA (one call of a lent device).
#
#   bench/gpu_checks.sh [OUT_DIR]        # OUT_DIR defaults to $OUT, else ./gpu-checks
#
# It runs from the repository root with the machine's own python (torch with CUDA), without
# installing the project: the checkout is put on PYTHONPATH and the daemon runs as
# `python -m daemon`. Packages that python lacks travel as wheels in .whl/ (an ignored folder):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl \
#       structlog watchdog wcmatch bracex
#
# Steps, each logged to OUT_DIR/<step>.log and never stopping the others:
#   1. the machine: GPU, torch, and any pretrained VGG19 in torch's hub cache (used if found);
#   2. the GPU tests (pytest -m gpu);
#   3. the engine benchmark at 512 and 1024 px, fp32 and bf16, with and without CUDA graphs,
#      and the presets at 512 px, one photo and a batch of 4;
#   4. a 4096 px output within an 8 GB memory budget;
#   5. the daemon benchmark against the engine alone.
set -u
cd "$(dirname "$0")/.." || exit
out=${1:-${OUT:-gpu-checks}}
mkdir -p "$out"
python=${PYTHON:-python3}
steps=${STEPS:-100}
if compgen -G ".whl/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

run() {  # run NAME COMMAND...: log to $out/NAME.log, report the exit status, go on
    local name=$1
    shift
    echo "== $name: $*"
    local started=$SECONDS
    "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "   rc=$rc in $((SECONDS - started)) s"
    tail -n 25 "$out/$name.log"
}

machine() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    "$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
    "$python" -c 'from engine.vgg import hub_checkpoint_path as p; print("hub cache:", p(), p().is_file())'
    find / -xdev -name 'vgg19*.pth' -size +100M 2>/dev/null | head
}

weights=()
found=$("$python" -c 'from engine.vgg import hub_checkpoint_path as p; print(p() if p().is_file() else "")' 2>/dev/null)
if [ -n "$found" ]; then
    weights=(--weights "$found")
fi

run machine machine
run gpu_tests "$python" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py
run engine "$python" bench/bench_engine.py --sizes 512 1024 --precisions fp32 bf16 \
    --steps "$steps" --presets fast balanced best --batch 4 "${weights[@]}" --json "$out/engine.json"
run large "$python" - <<'EOF'
import tempfile
import time
from pathlib import Path
import torch
from PIL import Image
from bench.bench_engine import _weights
from engine.params import EngineConfig, StyleParams, StyleSpec
from engine.stylizer import Stylizer
weights, kind = _weights(None, Path(tempfile.mkdtemp()))  # the hub cache's, else random
engine = Stylizer(EngineConfig(device="cuda", precision="auto", memory_budget_mb=8000,
                               weights=weights, download=False))
with Image.open("samples/astronaut.png") as im:
    photo = im.convert("RGB")
torch.cuda.reset_peak_memory_stats()
start = time.perf_counter()
result = engine.stylize(photo, StyleSpec.of("samples/starry_night.jpg"),
                        StyleParams(size=4096, steps=60, scales=3))
torch.cuda.synchronize()
print(f"4096 px ({kind} weights): {result.image.size}, {time.perf_counter() - start:.1f} s, peak "
      f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB allocated (budget 8000 MiB)")
EOF
run daemon "$python" bench/bench_daemon.py --device cuda --precision bf16 --size 512 \
    --steps 300 --scales 3 --photos 32 --batch-size 4 "${weights[@]}" --json "$out/daemon.json"
echo "== logs and JSON in $out"
