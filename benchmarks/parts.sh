# What the GPU scripts share (sourced by gpu_check.sh and gpu_perf.sh, from the repository root,
# with RESULTS set): the interpreter, the environment, and `part`, which runs one part with a
# time limit and counts the parts that failed in $failed.
#
# PYTHON picks the interpreter (default: env/bin/python when present, else python3).
mkdir -p "$RESULTS"
if [ -z "${PYTHON:-}" ]; then
    if [ -x env/bin/python ]; then PYTHON=env/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
failed=0

part() {  # part NAME SECONDS COMMAND...: run with a time limit, log to RESULTS/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s): $*"
    local began=$SECONDS
    timeout "$limit" "$@" > "$RESULTS/$name.log" 2>&1
    local status=$?
    cat "$RESULTS/$name.log"
    echo "== $name: exit $status after $((SECONDS - began)) s"
    [ "$status" -eq 0 ] || failed=$((failed + 1))
}

# The tests that need a CUDA GPU (marked `cuda`, skipped elsewhere): the window kernel of the DiT's
# sliding-window layers, and CUDA graphs with gradient accumulation and with checkpointing. Named
# file by file, so that pytest imports only what a bare GPU machine has (pytest-xdist is not needed).
CUDA_TESTS=(tests/models/test_attention_cuda.py tests/training/test_compilation_cuda.py)
cuda_tests() {  # cuda_tests SECONDS: the CUDA tests as one part, log in RESULTS/cuda_tests.log
    part cuda_tests "$1" "$PYTHON" -m pytest -p no:xdist -o addopts="-ra" -v "${CUDA_TESTS[@]}"
}
