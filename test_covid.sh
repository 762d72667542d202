#!/usr/bin/env bash
# Score the COVIDx test set (100 COVID-positive + 100 negative) with the checkpoint that
# train_covid.sh wrote last, and report AUROC, sensitivity and specificity.
# The original script asked for --test_iters 100, a checkpoint training never writes; this one
# tests the newest <N>-G.ckpt in $OUT/models unless TEST_ITERS names another.
# Keep the architecture values equal to those used for training.
set -euo pipefail
cd "$(dirname "$0")"

IMAGE_DIR=${IMAGE_DIR:-datasets/covid}
LIST_DIR=${LIST_DIR:-data/covid}
OUT=${OUT:-covid}
TEST_ITERS=${TEST_ITERS:-latest}     # or an iteration number, e.g. 400000
IMAGE_SIZE=${IMAGE_SIZE:-256}
G_CONV_DIM=${G_CONV_DIM:-64}
G_REPEAT_NUM=${G_REPEAT_NUM:-6}
D_CONV_DIM=${D_CONV_DIM:-64}
D_REPEAT_NUM=${D_REPEAT_NUM:-6}
BATCH_SIZE=${BATCH_SIZE:-1}
NUM_WORKERS=${NUM_WORKERS:-2}
DEVICE=${DEVICE:-auto}

# No split lists in $LIST_DIR: build them from the label files in data/covidnet_labels/
# (COVIDX_TRAIN_LABELS / COVIDX_TEST_LABELS name others; see datasets/README.md).
source tools/covid_lists.sh
ensure_covid_lists "$LIST_DIR"

python main.py --mode testAUC --dataset Covid \
    --image_dir "$IMAGE_DIR" --list_dir "$LIST_DIR" \
    --image_size "$IMAGE_SIZE" --g_conv_dim "$G_CONV_DIM" --g_repeat_num "$G_REPEAT_NUM" \
    --d_conv_dim "$D_CONV_DIM" --d_repeat_num "$D_REPEAT_NUM" \
    --test_iters "$TEST_ITERS" --batch_size "$BATCH_SIZE" --num_workers "$NUM_WORKERS" \
    --device "$DEVICE" --model_save_dir "$OUT/models" --result_dir "$OUT/results" \
    --log_dir "$OUT/logs" --sample_dir "$OUT/samples" "$@"
