#!/usr/bin/env bash
# The GPU checks of the training engine and the presets, as one script for a machine with an
# NVIDIA GPU (a few minutes on an H100/H200):
#   0. the tests that need a CUDA GPU (tests/models/test_attention_cuda.py,
#      tests/training/test_compilation_cuda.py; needs pytest): the sliding-window layers on the flash
#      kernel's own window against the dense mask, and CUDA graphs with gradient accumulation and
#      with checkpointing against the same compiled runs without them;
#   1. `acestep-trainer gpu` on the real card (NVML monitor, preset choice, estimate);
#   2. benchmarks/gpu_presets.py: every preset on the real-size 2B transformer, peak memory
#      against its card and against the estimate (writes presets.json with every figure);
#   3. the same for the 4B XL model with its frozen weights in NF4 on the 8 and 12 GB presets
#      (model.quantization=nf4; writes presets-xl-nf4.json);
#   4. benchmarks/training_step.py on the 2B transformer: trainer step vs the official-style
#      reference loop and a bare PyTorch loop, batch 4 and batch 1, 60 s crops, gradient
#      checkpointing (benchmarks/gpu_perf.sh runs the performance grid of issue 11).
#
#   bash benchmarks/gpu_check.sh [RESULTS_DIR]      # default: gpu-results/ ($OUT when set)
#
# PYTHON picks the interpreter (default: env/bin/python when present, else python3). Each part has
# its own time limit, so one that hangs or fails leaves the others' figures. Exit status: the
# number of parts that failed.
set -u
cd "$(dirname "$0")/.."
RESULTS=${1:-${OUT:-gpu-results}}
source benchmarks/parts.sh  # PYTHON, the environment, part and $failed

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$RESULTS/gpu.txt"
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
cuda_tests 300
part cli_gpu 40 "$PYTHON" -m acestep.cli gpu --config examples/train_lora.toml
part presets 240 "$PYTHON" benchmarks/gpu_presets.py --refit --json "$RESULTS/presets.json"
part presets_xl_nf4 150 "$PYTHON" benchmarks/gpu_presets.py --size xl --presets vram_8gb,vram_12gb \
    --set model.quantization=nf4 --json "$RESULTS/presets-xl-nf4.json"
part step_batch4 120 "$PYTHON" benchmarks/training_step.py --size 2b --batch 4 --seconds 60 --gradient-checkpointing --bare
part step_batch1 100 "$PYTHON" benchmarks/training_step.py --size 2b --batch 1 --seconds 60 --gradient-checkpointing --bare
echo "parts failed: $failed"
exit "$failed"
