#!/usr/bin/env bash
# Train HealthyGAN on COVIDx as in the paper: 256 px, 400,000 iterations, batch 16.
# Data: images in $IMAGE_DIR/train and $IMAGE_DIR/test, split lists in $LIST_DIR
# (see datasets/README.md; built from the shipped label files when absent). Edit the values
# below; extra flags are passed on to main.py.
set -euo pipefail
cd "$(dirname "$0")"

IMAGE_DIR=${IMAGE_DIR:-datasets/covid}
LIST_DIR=${LIST_DIR:-data/covid}
OUT=${OUT:-covid}                    # logs, models, samples and results go under here
IMAGE_SIZE=${IMAGE_SIZE:-256}
BATCH_SIZE=${BATCH_SIZE:-16}
NUM_ITERS=${NUM_ITERS:-400000}
NUM_ITERS_DECAY=${NUM_ITERS_DECAY:-100000}
G_CONV_DIM=${G_CONV_DIM:-64}
D_CONV_DIM=${D_CONV_DIM:-64}
G_REPEAT_NUM=${G_REPEAT_NUM:-6}
D_REPEAT_NUM=${D_REPEAT_NUM:-6}
G_LR=${G_LR:-0.0001}
D_LR=${D_LR:-0.0001}
N_CRITIC=${N_CRITIC:-2}
LAMBDA_ID=${LAMBDA_ID:-1}
LAMBDA_REC=${LAMBDA_REC:-1}
LAMBDA_GP=${LAMBDA_GP:-10}
LAMBDA_MASK=${LAMBDA_MASK:-0.1}
NUM_WORKERS=${NUM_WORKERS:-4}
MODEL_SAVE_STEP=${MODEL_SAVE_STEP:-10000}
SAMPLE_STEP=${SAMPLE_STEP:-1000}
SEED=${SEED:-0}
HOLDOUT_FRACTION=${HOLDOUT_FRACTION:-0}  # as the original: train on every listed image
DEVICE=${DEVICE:-auto}
LAUNCH=${LAUNCH:-python}             # train_covid_ddp.sh sets a torchrun command here

# No split lists in $LIST_DIR: build them from the label files in data/covidnet_labels/
# (COVIDX_TRAIN_LABELS / COVIDX_TEST_LABELS name others; see datasets/README.md).
source tools/covid_lists.sh
ensure_covid_lists "$LIST_DIR"

$LAUNCH main.py --mode train --dataset Covid \
    --image_dir "$IMAGE_DIR" --list_dir "$LIST_DIR" \
    --image_size "$IMAGE_SIZE" --batch_size "$BATCH_SIZE" \
    --num_iters "$NUM_ITERS" --num_iters_decay "$NUM_ITERS_DECAY" \
    --g_conv_dim "$G_CONV_DIM" --d_conv_dim "$D_CONV_DIM" \
    --g_repeat_num "$G_REPEAT_NUM" --d_repeat_num "$D_REPEAT_NUM" \
    --g_lr "$G_LR" --d_lr "$D_LR" --n_critic "$N_CRITIC" \
    --lambda_id "$LAMBDA_ID" --lambda_rec "$LAMBDA_REC" --lambda_gp "$LAMBDA_GP" \
    --lambda_mask "$LAMBDA_MASK" \
    --num_workers "$NUM_WORKERS" --model_save_step "$MODEL_SAVE_STEP" \
    --sample_step "$SAMPLE_STEP" --seed "$SEED" --device "$DEVICE" \
    --holdout_fraction "$HOLDOUT_FRACTION" \
    --log_dir "$OUT/logs" --model_save_dir "$OUT/models" \
    --sample_dir "$OUT/samples" --result_dir "$OUT/results" "$@"
