#!/usr/bin/env bash
# The pediatric pneumonia benchmark (ZhangLab; Kermany et al. 2018) on a CPU: train HealthyGAN on
# its healthy/ and unannotated mixed/ images, print the validation table (validation/ and the
# held-out mixed images: every score, every ensemble, the lead over the image's global
# statistics, tools/score_study.py), score validation/ with the normal-only references (PCA,
# kNN) and the global statistics beside it, and, where DATA has test/ (the official test split),
# score test/ once with the same references (bench_nih.sh's second half). Make DATA from the
# public download with tools/prepare_zhanglab.py. The settings differing from bench_nih.sh's
# NIH recipe were chosen on validation (docs/zhanglab.md); the rest is that recipe.
# Budget: about an hour on a 2-core CPU per seed. Run again on the same OUT, it resumes or
# re-tests. Extra flags go to main.py.
set -euo pipefail
cd "$(dirname "$0")"

DATA=${DATA:-datasets/zhanglab}     # healthy/ mixed/ validation/ [test/]: tools/prepare_zhanglab.py --out
OUT=${OUT:-zhanglab_run}
SEED=${SEED:-0}
IMAGE_SIZE=${IMAGE_SIZE:-64}
NUM_ITERS=${NUM_ITERS:-10000}       # chosen on validation over 8000 (docs/zhanglab.md, rule Z1)
SCORE_VARIANT=${SCORE_VARIANT:-ref_z}  # chosen on validation (docs/zhanglab.md, rule Z2)
ENSEMBLE=${ENSEMBLE:-4}             # the last 4 checkpoints' maps, averaged
AE_ITERS=${AE_ITERS:-2000}          # the normal-only autoencoder on test/ (0: skip)
PCA_COMPONENTS=${PCA_COMPONENTS:-32}
KNN_K=${KNN_K:-5}

if [ ! -d "$DATA/healthy" ] || [ ! -d "$DATA/mixed" ] || [ ! -d "$DATA/validation/normal" ]; then
    echo "error: $DATA needs healthy/, mixed/ and validation/normal|anomalous/; make it with" \
         "python tools/prepare_zhanglab.py (see datasets/README.md), or set DATA" >&2
    exit 2
fi
TEST=0
if [ -d "$DATA/test/normal" ]; then TEST=1; fi

export DATA OUT SEED IMAGE_SIZE NUM_ITERS SCORE_VARIANT ENSEMBLE AE_ITERS PCA_COMPONENTS KNN_K TEST
export HOLDOUT_LABELS="$DATA/mixed_truth.csv" VAL_DIR="$DATA/validation"
bash bench_nih.sh "$@"

# The references on validation/: a view of DATA whose test/ is its validation/ (nothing copied).
VIEW="$OUT/validation_view"
mkdir -p "$VIEW"
for sub in healthy mixed; do ln -sfn "$(cd "$DATA/$sub" && pwd)" "$VIEW/$sub"; done
ln -sfn "$(cd "$DATA/validation" && pwd)" "$VIEW/test"
python tools/baselines.py --dataset Folder --image_dir "$VIEW" --image_size "$IMAGE_SIZE" \
    --holdout_fraction "${HOLDOUT:-0.2}" --holdout_labels "$DATA/mixed_truth.csv" \
    --holdout_stratify "${HOLDOUT_STRATIFY:-true}" \
    --seed "$SEED" --result_dir "$OUT/baselines_validation" \
    --methods mean_intensity,global_mean,global_contrast,global_sharpness,pca,knn \
    --pca_components "$PCA_COMPONENTS" --knn_k "$KNN_K"
echo "Validation, this seed (give tools/seed_table.py --validation $SCORE_VARIANT every seed's OUT):"
python tools/seed_table.py --validation "$SCORE_VARIANT" "$OUT"
