#!/usr/bin/env bash
# Your own radiographs: train HealthyGAN on DATA/healthy/ (known healthy) and DATA/mixed/
# (unannotated, healthy and diseased), then, if DATA/test/ exists (normal/, anomalous/), score it
# with testAUC. HOLDOUT of each training folder is kept out of training: its images give the
# label-free AUCp at every checkpoint and the healthy reference new scores are compared with.
# The recipe is bench_nih.sh's but for the score (chosen on nih-cxr-mini's validation, sized
# for a CPU; docs/results.md); on a GPU with many images, train_covid.sh's paper settings are
# the other end.
# Paths are taken from where you run it, e.g. DATA=~/cxr bash path/to/train_folder.sh; a second
# run continues (or re-tests) the first. Extra flags go to main.py, in both modes.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")" && pwd)"

DATA=${DATA:-}                      # healthy/, mixed/ and, optionally, test/normal/ test/anomalous/
OUT=${OUT:-folder_run}              # logs, models, samples, results
SEED=${SEED:-0}
HOLDOUT=${HOLDOUT:-0.2}             # of healthy and of mixed, never trained on (0: none, no AUCp)
IMAGE_SIZE=${IMAGE_SIZE:-64}        # chosen on NIH validation (128: D_REPEAT_NUM=5 NUM_ITERS=5500)
G_CONV_DIM=${G_CONV_DIM:-16}
D_CONV_DIM=${D_CONV_DIM:-16}
G_REPEAT_NUM=${G_REPEAT_NUM:-2}
D_REPEAT_NUM=${D_REPEAT_NUM:-4}     # 5 at 128 px (the critic's patches stay the same size)
BATCH_SIZE=${BATCH_SIZE:-8}
NUM_ITERS=${NUM_ITERS:-8000}         # about 20 min at 64 px on a CPU (docs/results.md)
MODEL_SAVE_STEP=${MODEL_SAVE_STEP:-500}   # the ensemble's members: the last ENSEMBLE of these
LAMBDA_ID=${LAMBDA_ID:-10}
LAMBDA_REC=${LAMBDA_REC:-10}
LAMBDA_MASK=${LAMBDA_MASK:-0.1}
LAMBDA_MSMALL=${LAMBDA_MSMALL:-30}  # weight of (mean m)^2 (original: 1; the mask saturates)
LAMBDA_MZERONE=${LAMBDA_MZERONE:-0}
G_LR=${G_LR:-0.0002}
D_LR=${D_LR:-0.0005}
TEST_ITERS=${TEST_ITERS:-latest}     # the last checkpoint ('best_aucp': the highest AUCp)
ENSEMBLE=${ENSEMBLE:-4}              # average the scores of the last 4 checkpoints (1: that one alone)
# the original's score (every variant is reported too); bench_nih.sh's ref_z, chosen on NIH
# validation radiographs, needs at least 3 held-out healthy images: SCORE_VARIANT=ref_z
SCORE_VARIANT=${SCORE_VARIANT:-mean}
NUM_WORKERS=${NUM_WORKERS:-0}
DEVICE=${DEVICE:-auto}

if [ -z "$DATA" ]; then
    echo "error: set DATA to your folder with healthy/ and mixed/ (test/ optional): DATA=path/to/images bash train_folder.sh" >&2
    exit 2
fi
for sub in healthy mixed; do
    if [ ! -d "$DATA/$sub" ]; then
        echo "error: $DATA/$sub not found; DATA needs healthy/ (known healthy images) and mixed/ (unannotated), see datasets/README.md" >&2
        exit 2
    fi
done

ARCH=(--image_size "$IMAGE_SIZE" --g_conv_dim "$G_CONV_DIM" --d_conv_dim "$D_CONV_DIM"
      --g_repeat_num "$G_REPEAT_NUM" --d_repeat_num "$D_REPEAT_NUM")
COMMON=(--dataset Folder --image_dir "$DATA" "${ARCH[@]}"
        --holdout_fraction "$HOLDOUT" --num_workers "$NUM_WORKERS" --seed "$SEED"
        --device "$DEVICE" --log_dir "$OUT/logs" --model_save_dir "$OUT/models"
        --sample_dir "$OUT/samples" --result_dir "$OUT/results")

RESUME=()
if ls "$OUT"/models/*-G.ckpt >/dev/null 2>&1; then RESUME=(--resume_iters latest); fi

python "$ROOT/main.py" --mode train "${COMMON[@]}" "${RESUME[@]}" --batch_size "$BATCH_SIZE" \
    --num_iters "$NUM_ITERS" --model_save_step "$MODEL_SAVE_STEP" \
    --sample_step "$MODEL_SAVE_STEP" --log_step 50 \
    --lambda_id "$LAMBDA_ID" --lambda_rec "$LAMBDA_REC" --lambda_mask "$LAMBDA_MASK" \
    --lambda_msmall "$LAMBDA_MSMALL" --lambda_mzerone "$LAMBDA_MZERONE" \
    --g_lr "$G_LR" --d_lr "$D_LR" "$@"

# Both branches leave the run's recommendation in $OUT/models/detector.json (what testAUC
# tested), which --mode score and healthygan.load follow unless told otherwise.
if [ -d "$DATA/test" ]; then
    python "$ROOT/main.py" --mode testAUC "${COMMON[@]}" --test_iters "$TEST_ITERS" \
        --ensemble "$ENSEMBLE" --score_variant "$SCORE_VARIANT" --batch_size 16 \
        --save_detector true "$@"
else
    echo "No $DATA/test/: the test set was not scored."
    case "$TEST_ITERS" in (''|*[!0-9]*) ITERS_JSON="\"$TEST_ITERS\"" ;; (*) ITERS_JSON=$TEST_ITERS ;; esac
    printf '{"test_iters": %s, "ensemble": %s, "score_variant": "%s"}\n' \
        "$ITERS_JSON" "$ENSEMBLE" "$SCORE_VARIANT" > "$OUT/models/detector.json"
fi

echo
echo "Outputs:"
echo "  checkpoints      $OUT/models/<iters>-G.ckpt (AUCp of the held-out images: $OUT/models/aucp.jsonl)"
echo "  training samples $OUT/samples/<iters>-images.jpg"
if [ -d "$DATA/test" ]; then
    echo "  metrics          $OUT/results/metrics.json, per-image scores $OUT/results/scores.csv"
fi
echo "  recommendation   $OUT/models/detector.json (checkpoint, ensemble, score)"
echo "Score new images:  python $ROOT/main.py --mode score --score_dir DIR --model_save_dir $OUT/models \\"
echo "    --result_dir $OUT/scores"
