#!/usr/bin/env bash
# The GPU checks in one run (issue 2: sharpness, probe bank and clip speed on an accelerator, and
# the CUDA paths against the host): the gpu-marked tests, then the three benchmarks on cuda.
# Needs a CUDA torch and the project's dependencies importable by $PY (default python3).
# Logs go to ${OUT:-gpu_check}/ (one file per step) and to stdout.
#   bash scripts/gpu_check.sh            # about 5 minutes on one H200
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
DEST=${OUT:-gpu_check}
mkdir -p "$DEST"
export PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" || exit 2
status=0
step() {  # step NAME COMMAND...: run, tee the log, remember a failure, carry on
    local name=$1; shift
    echo "== $name: $*"
    "$@" 2>&1 | tee "$DEST/$name.log" || status=1
}
step tests "$PY" -m pytest -q -m gpu tests/measure/test_gpu_paths.py -p no:cacheprovider
step sharpness "$PY" benchmarks/bench_sharpness.py --device cuda --repeats 5
step sharpness_dbl "$PY" benchmarks/bench_sharpness.py --device cuda --repeats 5 --method double_backward
step probes "$PY" benchmarks/bench_probes.py --device cuda --repeats 7
step clip "$PY" benchmarks/bench_clip.py --device cuda --repeats 5
exit $status
