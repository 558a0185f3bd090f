#!/usr/bin/env bash
# GPU performance (issue 11) as one script for a machine with an NVIDIA GPU, about 8 minutes on an
# H100 including the model builds and compiles. The goals come first, so a session that the budget
# cuts off still measures them:
#   1. the GPU, driver, torch and CUDA versions, the date (gpu.txt, env.txt);
#   2. benchmarks/preprocess_throughput.py: the real-size VAE, text encoder and condition encoder
#      (seconds of audio encoded per second; goal: VAE >= 200x real time);
#   3. benchmarks/training_grid.py on the 2B transformer, the goal cells (GOALS; goals/grid.md,
#      goals/grid.json, logs), each in its own process with its own time limit:
#        8x60:compile:cudagraphs       batch 8 x 60 s, regional compile with run.cuda_graphs, no
#                                      checkpointing: the best case for the MFU goal (>= 40%); since
#                                      2026-11-28 (after run 4) the sliding-window calls run on the flash
#                                      kernel with its own window where the plan's probe allows (the run's
#                                      log says "attention: sliding-window calls on the flash kernel ...")
#        1x60:compile:cudagraphs       batch 1 x 60 s the same, against the reference loop, which runs
#                                      eagerly (goal: >= 1.5x)
#   4. benchmarks/profile_step.py at batch 8 x 60 s with compile and CUDA graphs (profile.log): the
#      GPU's busy time against the step's wall time, whether the best form of the step is still
#      bound by the host, and its costliest kernels; for the bare step and for the trainer's own
#      loop (--trainer: data, the per-step sync, bookkeeping), whose difference is what the trainer adds;
#   5. benchmarks/attention_backends.py: the kernel each attention call of the 2B model gets at
#      batch 8 x 60 s, and what the other kernels and two rewrites of the call cost (attention.log);
#      first the flash kernel with its own window and FlexAttention for the sliding-window call, both
#      skipping the 20 of 36 key blocks the window leaves out (ATTENTION=masked: that call alone);
#   6. the grid's other cells (CELLS; grid/grid.md, grid/grid.json, logs), in this order, until the
#      budget is spent. The first is the batch-8 goal cell with the dense sliding-window mask, what the
#      flash kernel's own window gains; the next two run the trainer's CUDA graphs as a real run would,
#      so that one cell answers several questions; the cells after them take the questions one at a time:
#        8x60:compile:cudagraphs:densewindow
#                                      the batch-8 goal cell with the sliding-window calls on their dense
#                                      mask, as before the window kernel (the goal cell against it: its effect)
#        1x60:compile:cudagraphs:varied:dropout:accum2
#                                      batch 1 with condition lengths of 300-500 tokens (a new shape nearly
#                                      every batch, graphs recorded again), the adapter's default dropout
#                                      (0.1, whose random numbers the graphs draw) and gradient accumulation 2
#                                      (the gradients in buffers of their own): a small GPU's run, and the
#                                      pair CUDA graphs + accumulation that the trainer refuses until a
#                                      cell with accum2 has run (without those buffers torch stops it)
#        8x60:ckpt:compile:cudagraphs:varied:dropout
#                                      batch 8 the same with gradient checkpointing inside the blocks'
#                                      graphs: the pair CUDA graphs + checkpointing that the trainer refuses
#                                      until it has run (it failed on the H200 with the re-entrant checkpoint
#                                      of that time), with the dropout masks drawn again in the recomputation
#        1x60:compile:cudagraphs:nosync
#                                      the batch-1 goal cell without the finite-gradient check, the step's
#                                      one host-device sync: what that sync costs when the rest is graphs
#        8x60:compile:cudagraphs:varied:dropout
#                                      the batch-8 goal cell with varied shapes and dropout, as a real run
#        1x60:compile:cudagraphs:varied
#                                      the batch-1 goal cell with varied shapes alone
#        1x60:compile:cudagraphs:accum2 8x60:ckpt:compile:cudagraphs
#                                      accumulation and checkpointing with CUDA graphs, each on its own
#        8x60:ckpt:compile 8x60:ckpt:compile:reentrantckpt
#                                      compiled blocks checkpointing inside their graphs against the
#                                      re-entrant checkpoint around them (that change's effect)
#        8x60:ckpt:diffnorm            8x60:ckpt with diffusers' RMSNorm (acestep.models.norms' effect)
#        8x60:ckpt:diffrope            8x60:ckpt with diffusers' fp32 RoPE (apply_rope's effect)
#        8x60:ckpt:difflayout          8x60:ckpt before acestep.models.layout (that change's effect)
#        8x60:ckpt:peftcast            8x60:ckpt with PEFT's input casts (Adapter.skip_input_casts' effect)
#        1x60:ckpt 1x60:ckpt:diffckpt  re-entrant checkpointing against diffusers' (that change's effect)
#        4x60:ckpt                     a cell the H200 session measured (2026-11-26)
#        8x60:ckpt:halfckpt            the first 12 of 24 blocks checkpointed (run.gradient_checkpointing_ratio
#                                      0.5): the time and peak memory it trades against 8x60:ckpt
#        8x60:compile 1x60:compile     the goal cells without CUDA graphs (measured 2026-11-28)
#        8x60:compile:staticcompile    8x60:compile with the blocks compiled for static shapes, what the
#                                      trainer's dynamic shapes (acestep.training.compilation) cost
#        8x60:ckpt 1x60                eagerly with and without checkpointing (measured 2026-11-28:
#                                      again, for the spread between runs)
# A later session can run what the budget left out with GOALS= CELLS=...
#
#   bash benchmarks/gpu_perf.sh [RESULTS_DIR]                   # default: gpu-perf/ ($OUT when set)
#   BUDGET=1800 GOALS= CELLS= bash benchmarks/gpu_perf.sh       # the whole grid (24 cells), 30 minutes
#
# BUDGET is the script's time in seconds (default 450); PARTS the parts to run (default
# "preprocess goals profile attention grid"; `tests` first runs the tests that need a CUDA GPU, as
# benchmarks/gpu_check.sh does, within the budget; the 2026-11-28 H200 run measured preprocess and the
# SDPA kernels, so `PARTS="goals profile attention grid" ATTENTION=masked` gives a short lease to
# the step and FlexAttention); ATTENTION `all` (default) or `masked` (module 5); COMPILE_TIMEOUT a
# compiled cell's limit in seconds (default 240: the first compiled cell's warm-up took 115 s at
# batch 8 on the H200); GOALS the goal cells (empty: none); CELLS the other cells (empty: all 24
# plain ones); SIZE=tiny checks the script on a CPU in about a minute (with GOALS=1x1 CELLS=1x1);
# PYTHON the interpreter (default: env/bin/python when present, else python3). Exit status: the
# number of parts that failed (a cell out of memory is a result, not a failure).
set -u
cd "$(dirname "$0")/.."
RESULTS=${1:-${OUT:-gpu-perf}}
BUDGET=${BUDGET:-450}
SIZE=${SIZE:-2b}
PARTS=${PARTS:-preprocess goals profile attention grid}
COMPILE_TIMEOUT=${COMPILE_TIMEOUT:-240}
ATTENTION=${ATTENTION:-all}
GOALS=${GOALS-8x60:compile:cudagraphs,1x60:compile:cudagraphs}
CELLS=${CELLS-8x60:compile:cudagraphs:densewindow,1x60:compile:cudagraphs:varied:dropout:accum2,8x60:ckpt:compile:cudagraphs:varied:dropout,1x60:compile:cudagraphs:nosync,8x60:compile:cudagraphs:varied:dropout,1x60:compile:cudagraphs:varied,1x60:compile:cudagraphs:accum2,8x60:ckpt:compile:cudagraphs,8x60:ckpt:compile,8x60:ckpt:compile:reentrantckpt,8x60:ckpt:diffnorm,8x60:ckpt:diffrope,8x60:ckpt:difflayout,8x60:ckpt:peftcast,1x60:ckpt,1x60:ckpt:diffckpt,4x60:ckpt,8x60:ckpt:halfckpt,8x60:compile,1x60:compile,8x60:compile:staticcompile,8x60:ckpt,1x60}
source benchmarks/parts.sh  # PYTHON, the environment, part and $failed

wanted() { [[ " $PARTS " == *" $1 "* ]]; }  # wanted PART: whether PARTS names it

grid() {  # grid NAME CELLS: the grid's CELLS (empty: all) in what is left of the budget, into RESULTS/NAME
    local name=$1 cells=$2 left=$((BUDGET - SECONDS))
    if [ "$left" -ge 60 ]; then
        # the grid stops starting cells 15 s before its own limit, so it ends by itself and writes its table
        part "$name" "$left" "$PYTHON" benchmarks/training_grid.py --size "$SIZE" ${cells:+--cells "$cells"} \
            --budget $((left - 15)) --timeout 150 --compile-timeout "$COMPILE_TIMEOUT" --out "$RESULTS/$name"
    else
        echo "== $name: skipped, ${left} s of the ${BUDGET} s budget left"
        failed=$((failed + 1))
    fi
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$RESULTS/gpu.txt"
{
    date -u "+date %Y-%m-%d %H:%M:%S UTC"
    "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', \
torch.backends.cudnn.version())"
    git rev-parse HEAD 2>/dev/null | sed 's/^/commit /'
} | tee "$RESULTS/env.txt"
if [ "$SIZE" = tiny ]; then models=(--size tiny --audio-seconds 2 --repeats 1); else models=(--size real); fi
wanted tests && cuda_tests 240
wanted preprocess && part preprocess 100 "$PYTHON" benchmarks/preprocess_throughput.py "${models[@]}" --json "$RESULTS/preprocess.json"
if [ -n "$GOALS" ] && wanted goals; then grid goals "$GOALS"; fi
if [ "$SIZE" = tiny ]; then
    shape=(--batch 1 --seconds 2 --repeats 2) profiled=(--batch 1 --seconds 2 --steps 1 --trainer)
else
    # the variants' timings (forward only, ...) would compile more graphs: not in a short lease
    shape=(--batch 8 --seconds 60) profiled=(--batch 8 --seconds 60 --compile --cuda-graphs --trainer --no-variants)
fi
if [ "$ATTENTION" = masked ]; then shape+=(--masked-only); fi
wanted profile && part profile 150 "$PYTHON" benchmarks/profile_step.py --size "$SIZE" "${profiled[@]}"
wanted attention && part attention 120 "$PYTHON" benchmarks/attention_backends.py --size "$SIZE" "${shape[@]}"
if wanted grid; then grid grid "$CELLS"; fi
echo "parts failed: $failed; results in $RESULTS"
exit "$failed"
