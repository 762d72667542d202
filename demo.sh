#!/usr/bin/env bash
# CPU quick start: synthetic chest radiographs -> a small HealthyGAN -> anomaly scores and AUROC.
# About 10 minutes on a 2-core laptop-class CPU. Edit the values below; extra flags go to main.py.
set -euo pipefail
cd "$(dirname "$0")"

DATA=${DATA:-datasets/synthetic}     # generated here on the first run (about 10 s)
OUT=${OUT:-demo_run}                 # logs, models, samples, results
SEED=${SEED:-0}
DATA_SIZE=${DATA_SIZE:-128}          # side of the generated PNGs
N_HEALTHY=${N_HEALTHY:-400}
N_MIXED=${N_MIXED:-400}              # 30% of them diseased, unannotated
N_TEST=${N_TEST:-100}                # per class
IMAGE_SIZE=${IMAGE_SIZE:-64}
G_CONV_DIM=${G_CONV_DIM:-16}
D_CONV_DIM=${D_CONV_DIM:-16}
G_REPEAT_NUM=${G_REPEAT_NUM:-2}
D_REPEAT_NUM=${D_REPEAT_NUM:-4}
BATCH_SIZE=${BATCH_SIZE:-8}
NUM_ITERS=${NUM_ITERS:-2000}
MODEL_SAVE_STEP=${MODEL_SAVE_STEP:-500}
SAMPLE_STEP=${SAMPLE_STEP:-500}
NUM_WORKERS=${NUM_WORKERS:-0}        # decoding 64 px images is cheap: keep both cores for training
DEVICE=${DEVICE:-auto}

python synthetic.py --out "$DATA" --seed "$SEED" --size "$DATA_SIZE" \
    --n_healthy "$N_HEALTHY" --n_mixed "$N_MIXED" --anomalous_fraction 0.3 \
    --n_test_normal "$N_TEST" --n_test_anomalous "$N_TEST"

COMMON=(--dataset Folder --image_dir "$DATA" --image_size "$IMAGE_SIZE"
        --g_conv_dim "$G_CONV_DIM" --d_conv_dim "$D_CONV_DIM"
        --g_repeat_num "$G_REPEAT_NUM" --d_repeat_num "$D_REPEAT_NUM"
        --num_workers "$NUM_WORKERS" --seed "$SEED" --device "$DEVICE"
        --log_dir "$OUT/logs" --model_save_dir "$OUT/models"
        --sample_dir "$OUT/samples" --result_dir "$OUT/results")

# A second run of the demo continues (or just re-tests) the first instead of overwriting it.
RESUME=()
if ls "$OUT"/models/*-G.ckpt >/dev/null 2>&1; then RESUME=(--resume_iters latest); fi

python main.py --mode train "${COMMON[@]}" "${RESUME[@]}" --batch_size "$BATCH_SIZE" \
    --num_iters "$NUM_ITERS" --model_save_step "$MODEL_SAVE_STEP" --sample_step "$SAMPLE_STEP" \
    --log_step 25 "$@"
python main.py --mode testAUC "${COMMON[@]}" --test_iters latest --batch_size 16 "$@"

echo
echo "Outputs:"
echo "  checkpoints      $OUT/models/<iters>-G.ckpt, <iters>-D.ckpt"
echo "  training samples $OUT/samples/<iters>-images.jpg (x, raw, x_hat, mask; mixed then healthy)"
echo "  metrics          $OUT/results/metrics.json, per-image scores $OUT/results/scores.csv"
echo "  loss curves      tensorboard --logdir $OUT/logs   (or $OUT/logs/stats.jsonl)"
