#!/usr/bin/env bash
# Score the COVIDx test set with the authors' released generator, pretrained/covid/360000-G.ckpt
# (256 px, default architecture). See pretrained/README.md for where to get the file.
set -euo pipefail
cd "$(dirname "$0")"

IMAGE_DIR=${IMAGE_DIR:-datasets/covid}
LIST_DIR=${LIST_DIR:-data/covid}
PRETRAINED_DIR=${PRETRAINED_DIR:-pretrained/covid}
TEST_ITERS=${TEST_ITERS:-360000}
RESULT_DIR=${RESULT_DIR:-covid/results_pretrained}
IMAGE_SIZE=${IMAGE_SIZE:-256}
BATCH_SIZE=${BATCH_SIZE:-1}
NUM_WORKERS=${NUM_WORKERS:-2}
DEVICE=${DEVICE:-auto}
G_CONV_DIM=${G_CONV_DIM:-64}       # the released generator's architecture (the original's defaults)
G_REPEAT_NUM=${G_REPEAT_NUM:-6}
# Its SHA-256, when you have recorded one (sha256sum 360000-G.ckpt): checked before anything runs.
PRETRAINED_SHA256=${PRETRAINED_SHA256:-}

CKPT="$PRETRAINED_DIR/$TEST_ITERS-G.ckpt"
if [ ! -f "$CKPT" ]; then
    echo "error: $CKPT not found." >&2
    echo "Download the authors' released COVID generator (360000-G.ckpt, from the original" >&2
    echo "HealthyGAN repository, github.com/mahfuzmohammad/HealthyGAN, pretrained_models/covid/)" >&2
    echo "and put it at $CKPT (see pretrained/README.md)." >&2
    exit 1
fi
# A truncated download, another file or another architecture: one line now, not a traceback
# after the split lists are built.
SHA=()
if [ -n "$PRETRAINED_SHA256" ]; then SHA=(--sha256 "$PRETRAINED_SHA256"); fi
python -m healthygan.detection.pretrained "$CKPT" --g_conv_dim "$G_CONV_DIM" \
    --g_repeat_num "$G_REPEAT_NUM" "${SHA[@]}"

# No split lists in $LIST_DIR: build them from the label files in data/covidnet_labels/
# (COVIDX_TRAIN_LABELS / COVIDX_TEST_LABELS name others; see datasets/README.md).
source tools/covid_lists.sh
ensure_covid_lists "$LIST_DIR"

python main.py --mode testAUC --dataset Covid \
    --image_dir "$IMAGE_DIR" --list_dir "$LIST_DIR" \
    --image_size "$IMAGE_SIZE" --test_iters "$TEST_ITERS" \
    --g_conv_dim "$G_CONV_DIM" --g_repeat_num "$G_REPEAT_NUM" \
    --batch_size "$BATCH_SIZE" --num_workers "$NUM_WORKERS" --device "$DEVICE" \
    --model_save_dir "$PRETRAINED_DIR" --result_dir "$RESULT_DIR" \
    --log_dir "$RESULT_DIR/logs" --sample_dir "$RESULT_DIR/samples" "$@"
