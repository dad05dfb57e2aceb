#!/usr/bin/env bash
# The CUDA checks, for a session whose task is lent a GPU machine (the `device` tool). Prepared and
# exercised on the CPU here; never run on a GPU yet. Two steps:
#   here:   .venv/bin/voxmap sim --scene indoor --seed 0 --frames 40 --scans 1 --out .gpu_data
#           (git-ignored, ~30 MB: the GPU machine cannot reach ../shared, so the frames travel)
#   there:  device run, carry [".gpu_data"], command: bash benchmarks/gpu_check.sh .gpu_data
# There, python3 already holds torch, triton, numpy, opencv and pytest, but no open3d: the Triton
# tests (fusion, rasterizer) run on CUDA (TRITON_INTERPRET=0), and `voxmap bench rgbd` times voxmap's
# map on CUDA with the torch voxel update and with the Triton one (no Open3D peer there).
# Results go to $OUT (the device tool brings that folder back). DEVICE=cpu TRITON_INTERPRET=1
# runs the same steps on the CPU (slowly), which is how this script is checked.
set -euo pipefail
DATA=${1:-.gpu_data}
OUT=${OUT:-/tmp/gpu_check}
DEVICE=${DEVICE:-cuda}
FRAMES=${FRAMES:-40}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TRITON_INTERPRET=${TRITON_INTERPRET:-0}
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())" \
    | tee "$OUT/versions.txt"
# The Triton tests need no open3d (the simulator imports it only to cast rays).
# A failing test must not cost the timings below (the device time is short): carry on, the log has it.
"$PY" -m pytest -q -p no:cacheprovider test/test_triton_fusion.py test/test_render_triton.py 2>&1 | tee "$OUT/tests.log" \
    || echo "TESTS FAILED (see $OUT/tests.log)"
for be in torch triton; do
    "$PY" -m voxmap_ros.cli bench rgbd --data "$DATA/rgbd" --frames "$FRAMES" --device "$DEVICE" --backend "$be" \
        --peers none --no-mesh --warmup 5 --quiet --json "$OUT/rgbd_${DEVICE}_${be}.json" 2>&1 | tee "$OUT/rgbd_${be}.log"
done
