#!/usr/bin/env bash
# CPU quick start: synthetic chest radiographs -> a small HealthyGAN -> anomaly scores and AUROC.
# About 5 minutes on 2 CPU cores. Edit the values below; extra flags go to main.py.
set -euo pipefail
cd "$(dirname "$0")"

DATA=${DATA:-datasets/synthetic}     # generated here on the first run (about 10 s)
OUT=${OUT:-demo_run}                 # logs, models, samples, results
SEED=${SEED:-0}
DATA_SIZE=${DATA_SIZE:-128}          # side of the generated PNGs
N_HEALTHY=${N_HEALTHY:-400}
N_MIXED=${N_MIXED:-400}              # 30% of them diseased, unannotated
N_TEST=${N_TEST:-100}                # per class
IMAGE_SIZE=${IMAGE_SIZE:-32}
G_CONV_DIM=${G_CONV_DIM:-16}
D_CONV_DIM=${D_CONV_DIM:-16}
G_REPEAT_NUM=${G_REPEAT_NUM:-2}
D_REPEAT_NUM=${D_REPEAT_NUM:-3}
BATCH_SIZE=${BATCH_SIZE:-8}
NUM_ITERS=${NUM_ITERS:-6000}
MODEL_SAVE_STEP=${MODEL_SAVE_STEP:-1000}
SAMPLE_STEP=${SAMPLE_STEP:-1000}
# Loss weights and learning rates for a short CPU run (the original's defaults, tuned for
# 400,000 iterations, learn far too slowly here): stronger identity and reconstruction terms,
# no zero-one mask term, a faster critic, and a stronger small-mask term: without it the mask
# saturates at 1 and the translation is G's whole output (an autoencoder's); with it the mask
# stays near the lesions and the translation is the input elsewhere. The learning rates decay
# linearly to zero over the last LR_DECAY_ITERS iterations, so that the run ends in a settled
# state rather than wherever the adversarial game stands at its last step. The mask weight and
# the decay were chosen on synthetic validation sets of other seeds (docs/results.md).
LAMBDA_ID=${LAMBDA_ID:-10}
LAMBDA_REC=${LAMBDA_REC:-10}
LAMBDA_MASK=${LAMBDA_MASK:-0.1}
LAMBDA_MSMALL=${LAMBDA_MSMALL:-20}
LAMBDA_MZERONE=${LAMBDA_MZERONE:-0}
G_LR=${G_LR:-0.0002}
D_LR=${D_LR:-0.0005}
LR_SCHEDULE=${LR_SCHEDULE:-linear}   # 'original': the original's schedule (in effect constant)
LR_DECAY_ITERS=${LR_DECAY_ITERS:-3000}
LR_UPDATE_STEP=${LR_UPDATE_STEP:-100}
# Held out of training for the label-free AUCp (main.py's default is 0: no hold-out). The demo
# trains on every image, as the original: its 400 + 400 images are few, and at 5% held out
# (20 + 20) the AUCp is too noisy to choose checkpoints by (docs/results.md). HOLDOUT=0.1 logs it.
HOLDOUT=${HOLDOUT:-0}
NUM_WORKERS=${NUM_WORKERS:-0}        # decoding small PNGs is cheap: keep both cores for training
DEVICE=${DEVICE:-auto}

python synthetic.py --out "$DATA" --seed "$SEED" --size "$DATA_SIZE" \
    --n_healthy "$N_HEALTHY" --n_mixed "$N_MIXED" --anomalous_fraction 0.3 \
    --n_test_normal "$N_TEST" --n_test_anomalous "$N_TEST"

COMMON=(--dataset Folder --image_dir "$DATA" --image_size "$IMAGE_SIZE"
        --g_conv_dim "$G_CONV_DIM" --d_conv_dim "$D_CONV_DIM"
        --g_repeat_num "$G_REPEAT_NUM" --d_repeat_num "$D_REPEAT_NUM"
        --holdout_fraction "$HOLDOUT" --num_workers "$NUM_WORKERS" --seed "$SEED"
        --device "$DEVICE"
        --log_dir "$OUT/logs" --model_save_dir "$OUT/models"
        --sample_dir "$OUT/samples" --result_dir "$OUT/results")

# A second run of the demo continues (or just re-tests) the first instead of overwriting it.
RESUME=()
if ls "$OUT"/models/*-G.ckpt >/dev/null 2>&1; then RESUME=(--resume_iters latest); fi

python main.py --mode train "${COMMON[@]}" "${RESUME[@]}" --batch_size "$BATCH_SIZE" \
    --lambda_id "$LAMBDA_ID" --lambda_rec "$LAMBDA_REC" --lambda_mask "$LAMBDA_MASK" \
    --lambda_msmall "$LAMBDA_MSMALL" --lambda_mzerone "$LAMBDA_MZERONE" \
    --g_lr "$G_LR" --d_lr "$D_LR" --lr_schedule "$LR_SCHEDULE" \
    --num_iters_decay "$LR_DECAY_ITERS" --lr_update_step "$LR_UPDATE_STEP" \
    --num_iters "$NUM_ITERS" --model_save_step "$MODEL_SAVE_STEP" --sample_step "$SAMPLE_STEP" \
    --log_step 50 "$@"
# --save_detector: detector.json, what --mode score and the API then use on this run
python main.py --mode testAUC "${COMMON[@]}" --test_iters latest --batch_size 16 \
    --save_detector true "$@"

echo
echo "Outputs:"
echo "  checkpoints      $OUT/models/<iters>-G.ckpt, <iters>-D.ckpt"
echo "  training samples $OUT/samples/<iters>-images.jpg (x, raw, x_hat, mask; mixed then healthy)"
echo "  metrics          $OUT/results/metrics.json, per-image scores $OUT/results/scores.csv"
echo "  loss curves      tensorboard --logdir $OUT/logs   (or $OUT/logs/stats.jsonl)"
echo
echo "Expected with these defaults (six runs, SEED 0-2 with 1 and 2 threads, a 2-core CPU; README):"
echo "  image AUROC 0.91 to 0.95, pixel AUROC 0.94 to 0.96, G's mask alone 0.89 to 0.93."
echo "  Far below that: a broken install or changed settings. Another CPU moves it a little."
