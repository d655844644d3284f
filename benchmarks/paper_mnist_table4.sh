#!/usr/bin/env bash
# Paper Table 4 on the real MNIST: the maxout teacher, then the FitNet by backprop, by KD and by FitNets
# (hints, then KD), all rows of the `mnist` preset in one resumable run.
#
#   benchmarks/paper_mnist_table4.sh DATA_DIR RUN_DIR [--set KEY=VALUE ...]
#
# DATA_DIR holds the four MNIST idx files (or a parent with mnist/). Rerunning the same command continues
# RUN_DIR from its last epoch (`fitnets-fast train --resume`); extra --set options apply to a new run only.
# Epoch caps come from the environment (unset: the preset's full recipe, see below):
#   TEACHER_EPOCHS  teacher cap      (preset: 1000, patience 100)
#   HINT_EPOCHS     hint stage cap   (preset: 500, patience 100)
#   EPOCHS          cap of the backprop, KD and FitNets-stage-2 trainings (preset: 500, patience 100)
#   THREADS         CPU threads      (default: leave torch's setting)
#   AMP             bf16 or none (default: bf16 where the CPU runs bfloat16 convolutions natively, AVX512-BF16
#                   or AMX, else none: elsewhere PyTorch's bfloat16 convolutions are over 10x slower)
# FITNETS_FAST names the command (default: fitnets-fast on PATH).
#
# Cost: the full recipe's early stopping (100 epochs without improvement) decides the number of epochs, so
# the uncapped table runs for days on 2 CPU cores; with caps the wall time is about the sum over the five
# stages of cap * seconds per epoch (the estimate and the state of the measured run are in
# benchmarks/results/paper-mnist-table4.md).
set -euo pipefail

if [ $# -lt 2 ]; then
    sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
DATA_DIR=$1
RUN_DIR=$2
shift 2
CMD=${FITNETS_FAST:-fitnets-fast}

if [ -f "$RUN_DIR/checkpoints/last.pt" ]; then
    echo "resuming $RUN_DIR" >&2
    exec $CMD train --resume "$RUN_DIR" --data-dir "$DATA_DIR" --quiet
fi

if [ -z "${AMP:-}" ]; then
    AMP=$(python -c 'from fitnets_fast.loop import cpu_has_native_bf16; print("bf16" if cpu_has_native_bf16() else "none")')
fi
SETS=(--set "amp=$AMP")
[ -n "${TEACHER_EPOCHS:-}" ] && SETS+=(--set "teacher_max_epochs=$TEACHER_EPOCHS")
[ -n "${HINT_EPOCHS:-}" ] && SETS+=(--set "hint_max_epochs=$HINT_EPOCHS")
[ -n "${EPOCHS:-}" ] && SETS+=(--set "max_epochs=$EPOCHS")
[ -n "${THREADS:-}" ] && SETS+=(--set "num_threads=$THREADS")
exec $CMD train --preset mnist --data-dir "$DATA_DIR" --out "$RUN_DIR" --quiet "${SETS[@]}" "$@"
