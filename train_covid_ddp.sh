#!/usr/bin/env bash
# Train HealthyGAN on COVIDx on several GPUs, or several machines, with torchrun (one process per
# GPU, NCCL; gloo on CPUs): train_covid.sh's hyperparameters and outputs, in less time.
# --batch_size is per process. By default the paper's batch of 16 is divided among the processes
# (GLOBAL_BATCH / processes each), so each iteration sees the same 16 pairs a one-GPU run sees.
# One machine:   NPROC_PER_NODE=4 bash train_covid_ddp.sh
# Two machines:  on each of them,
#                NNODES=2 NPROC_PER_NODE=8 RDZV_ENDPOINT=node0:29500 bash train_covid_ddp.sh
# Every other variable of train_covid.sh (NUM_ITERS, OUT, ...) and extra flags pass through.
set -euo pipefail
cd "$(dirname "$0")"

# processes on this machine: one per GPU (default: every visible GPU; 1 without a GPU)
NPROC_PER_NODE=${NPROC_PER_NODE:-$(python -c \
    'import torch; print(max(torch.cuda.device_count(), 1))')}
NNODES=${NNODES:-1}
RDZV_ENDPOINT=${RDZV_ENDPOINT:-}     # host:port reachable from every machine (NNODES > 1)
RDZV_ID=${RDZV_ID:-healthygan}       # the same on every machine of one run
GLOBAL_BATCH=${GLOBAL_BATCH:-16}     # the paper's batch, shared by all processes

WORLD=$((NPROC_PER_NODE * NNODES))
if [ -z "${BATCH_SIZE:-}" ]; then
    if (( GLOBAL_BATCH % WORLD != 0 )); then
        echo "error: GLOBAL_BATCH $GLOBAL_BATCH cannot be shared by $WORLD processes; set" \
             "GLOBAL_BATCH to a multiple of $WORLD, or BATCH_SIZE (per process)" >&2
        exit 2
    fi
    BATCH_SIZE=$((GLOBAL_BATCH / WORLD))
fi
export BATCH_SIZE

if [ "$NNODES" -gt 1 ]; then
    if [ -z "$RDZV_ENDPOINT" ]; then
        echo "error: NNODES=$NNODES needs RDZV_ENDPOINT=host:port of one of the machines" >&2
        exit 2
    fi
    RDZV="--nnodes $NNODES --rdzv_backend c10d --rdzv_endpoint $RDZV_ENDPOINT --rdzv_id $RDZV_ID"
else
    RDZV="--standalone --nnodes 1"
fi
echo "torchrun: $WORLD processes ($NNODES machine(s) x $NPROC_PER_NODE), --batch_size $BATCH_SIZE" \
     "each: global batch $((WORLD * BATCH_SIZE))"
export LAUNCH="python -m torch.distributed.run $RDZV --nproc_per_node $NPROC_PER_NODE"
exec bash train_covid.sh "$@"
