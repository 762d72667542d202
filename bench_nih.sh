#!/usr/bin/env bash
# Real radiographs on a CPU: train HealthyGAN on nih-cxr-mini (healthy + unannotated mixed only),
# test it once with a label-free choice (the last 4 checkpoints' maps averaged, scored against the
# held-out healthy images' at each pixel: ref_z), and score the same test images with the
# simple references and the normal-only autoencoder (tools/baselines.py) side by side, with how
# much of HealthyGAN's score the global image statistics explain (cross-fitted on the test
# images). LAMBDA_MSMALL, the ensemble,
# SCORE_VARIANT (ref_z) and IMAGE_SIZE (64 px) were chosen on validation: images held out of
# healthy/ and mixed/ (labels from mixed_truth.csv, never trained on) and validation/'s
# radiographs of other patients; the networks were set in earlier development that compared on
# test/ (docs/results.md). TEST=0 trains and prints the validation table without
# scoring test/. Run again on the same OUT, it resumes or re-tests and reuses the autoencoder.
# Budget: at most 60 minutes on a 2-core CPU (training at 64 px: about 20 min with one
# thread, about 30 min in all). Extra flags go to main.py.
set -euo pipefail
cd "$(dirname "$0")"

DATA=${DATA:-datasets/nih-cxr-mini}   # shipped; any folder with healthy/ mixed/ test/normal/ test/anomalous/
OUT=${OUT:-nih_run}
SEED=${SEED:-0}
HOLDOUT=${HOLDOUT:-0.2}              # of healthy and of mixed, never trained on: AUCp
# The held-out mixed images' true labels, for a validation AUROC at every checkpoint (choices
# made on it, never on test/); training never reads them. Empty: none.
HOLDOUT_LABELS=${HOLDOUT_LABELS-$DATA/mixed_truth.csv}
# Labelled validation radiographs of other patients (normal/, anomalous/): with the held-out
# images, where checkpoints, ensembles and scores are compared (tools/score_study.py), and where
# testAUC's threshold is chosen. Empty or absent: the held-out images alone (tools/validation.py).
VAL_DIR=${VAL_DIR-$DATA/validation}
HOLDOUT_STRATIFY=${HOLDOUT_STRATIFY:-true}  # HOLDOUT of each label of mixed/ (false: of all)
IMAGE_SIZE=${IMAGE_SIZE:-64}       # 128: D_REPEAT_NUM=5 NUM_ITERS=5500, 3x slower, lower on validation
G_CONV_DIM=${G_CONV_DIM:-16}
D_CONV_DIM=${D_CONV_DIM:-16}
G_REPEAT_NUM=${G_REPEAT_NUM:-2}
D_REPEAT_NUM=${D_REPEAT_NUM:-4}     # 5 at 128 px (the critic's patches stay the same size)
BATCH_SIZE=${BATCH_SIZE:-8}
NUM_ITERS=${NUM_ITERS:-8000}         # ~20 min at 64 px on one thread (128 px: 5500 in 43 min on 2 idle cores)
NUM_ITERS_DECAY=${NUM_ITERS_DECAY:-100000}
LR_SCHEDULE=${LR_SCHEDULE:-original} # in effect constant here; 'linear' decayed to 0 measured no better
LR_UPDATE_STEP=${LR_UPDATE_STEP:-1000}
MODEL_SAVE_STEP=${MODEL_SAVE_STEP:-500}   # the ensemble's members: the last ENSEMBLE of these
LAMBDA_ID=${LAMBDA_ID:-10}
LAMBDA_REC=${LAMBDA_REC:-10}
LAMBDA_MASK=${LAMBDA_MASK:-0.1}
LAMBDA_MSMALL=${LAMBDA_MSMALL:-30}  # weight of (mean m)^2 (original: 1; the mask saturates)
LAMBDA_MZERONE=${LAMBDA_MZERONE:-0}
G_LR=${G_LR:-0.0002}
D_LR=${D_LR:-0.0005}
PCA_COMPONENTS=${PCA_COMPONENTS:-32}   # references: PCA reconstruction error, k nearest healthy
KNN_K=${KNN_K:-5}
TEST_ITERS=${TEST_ITERS:-latest}     # the last checkpoint ('best_aucp': the highest AUCp; noisy here)
ENSEMBLE=${ENSEMBLE:-4}              # average the maps of the last 4 checkpoints (1: that one alone)
# headline score: the ensemble's map against the held-out healthy images' at each pixel (mean:
# the original's; every other variant is reported too)
SCORE_VARIANT=${SCORE_VARIANT:-ref_z}
AE_ITERS=${AE_ITERS:-2000}           # the normal-only autoencoder reference (same G backbone); 0: skip
NUM_WORKERS=${NUM_WORKERS:-0}
TEST=${TEST:-1}                      # 0: train and print the validation table only (compare
                                     # settings on validation; score test/ once, for the final one)
DEVICE=${DEVICE:-auto}

if [ ! -d "$DATA/healthy" ]; then
    echo "error: $DATA/healthy not found; set DATA to a folder with healthy/, mixed/ and test/" >&2
    exit 2
fi

COMMON=(--dataset Folder --image_dir "$DATA" --image_size "$IMAGE_SIZE"
        --g_conv_dim "$G_CONV_DIM" --d_conv_dim "$D_CONV_DIM"
        --g_repeat_num "$G_REPEAT_NUM" --d_repeat_num "$D_REPEAT_NUM"
        --holdout_fraction "$HOLDOUT" --num_workers "$NUM_WORKERS" --seed "$SEED"
        --device "$DEVICE" --log_dir "$OUT/logs" --model_save_dir "$OUT/models"
        --sample_dir "$OUT/samples" --result_dir "$OUT/results")

LABELS=()
if [ -n "$HOLDOUT_LABELS" ] && [ -f "$HOLDOUT_LABELS" ]; then
    LABELS=(--holdout_labels "$HOLDOUT_LABELS" --holdout_stratify "$HOLDOUT_STRATIFY")
fi

VAL=()
if [ -n "$VAL_DIR" ] && [ -d "$VAL_DIR/normal" ]; then VAL=(--val_dir "$VAL_DIR"); fi
RESUME=()
if ls "$OUT"/models/*-G.ckpt >/dev/null 2>&1; then RESUME=(--resume_iters latest); fi

start=$(date +%s)
python main.py --mode train "${COMMON[@]}" "${RESUME[@]}" "${LABELS[@]}" --batch_size "$BATCH_SIZE" \
    --num_iters "$NUM_ITERS" --num_iters_decay "$NUM_ITERS_DECAY" \
    --lr_schedule "$LR_SCHEDULE" --lr_update_step "$LR_UPDATE_STEP" \
    --lambda_id "$LAMBDA_ID" --lambda_rec "$LAMBDA_REC" --lambda_mask "$LAMBDA_MASK" \
    --lambda_msmall "$LAMBDA_MSMALL" --lambda_mzerone "$LAMBDA_MZERONE" --g_lr "$G_LR" --d_lr "$D_LR" \
    --model_save_step "$MODEL_SAVE_STEP" \
    --sample_step "$MODEL_SAVE_STEP" --log_step 50 "$@"
echo "Training took $(( $(date +%s) - start )) s."
if [ ${#LABELS[@]} -gt 0 ]; then
    if [ ${#VAL[@]} -gt 0 ]; then
        python tools/score_study.py --model_save_dir "$OUT/models" --val_dir "$VAL_DIR" \
            --ensemble "$ENSEMBLE"
    else
        python tools/validation.py --model_save_dir "$OUT/models" --ensemble "$ENSEMBLE"
    fi
fi
if [ "$TEST" = 0 ]; then
    echo "TEST=0: the test set was not scored. Results: $OUT/models/validation*.json"
    exit 0
fi
python main.py --mode testAUC "${COMMON[@]}" --test_iters "$TEST_ITERS" \
    --score_variant "$SCORE_VARIANT" --ensemble "$ENSEMBLE" --batch_size 16 \
    --save_detector true "${VAL[@]}" "$@"  # detector.json: what --mode score and the API use
METHODS=mean_intensity,global_mean,global_contrast,global_sharpness,pca,knn
if [ "$AE_ITERS" -gt 0 ]; then METHODS=$METHODS,autoencoder; fi
AE=()  # an earlier run of this OUT trained the autoencoder already: score with it
if [ -f "$OUT/baselines/autoencoder/$AE_ITERS-G.ckpt" ]; then
    AE=(--ae_checkpoint "$OUT/baselines/autoencoder/$AE_ITERS-G.ckpt")
fi
python tools/baselines.py --dataset Folder --image_dir "$DATA" --image_size "$IMAGE_SIZE" \
    --holdout_fraction "$HOLDOUT" "${LABELS[@]}" --seed "$SEED" --result_dir "$OUT/baselines" \
    --methods "$METHODS" --pca_components "$PCA_COMPONENTS" --knn_k "$KNN_K" \
    --ae_iters "$((AE_ITERS > 0 ? AE_ITERS : 1))" --ae_g_conv_dim "$G_CONV_DIM" \
    --ae_g_repeat_num "$G_REPEAT_NUM" --ae_batch_size "$BATCH_SIZE" --ae_lr "$G_LR" \
    --compare "$OUT/results/scores.csv" --explain "$OUT/results/scores.csv" "${AE[@]}"
echo "Total $(( $(date +%s) - start )) s. Results: $OUT/results/metrics.json, $OUT/baselines/baselines.json"
# The headline's row for this seed; give tools/seed_table.py every seed's OUT for the table.
python tools/seed_table.py "$OUT"
