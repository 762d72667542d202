#!/usr/bin/env bash
# The quick start's spread: bash demo.sh with SEED 0, 1 and 2 (each its own synthetic set and
# training seed), each with one thread and with torch's default thread count, one run at a
# time, then one table (image AUROC, pixel AUROC of the map and of G's mask alone, wall time) with
# the mean and range. README's quick-start numbers come from here (docs/results.md has the runs).
# Extra flags go to demo.sh (and from there to main.py).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-quickstart_runs}          # one folder per run below it, and table.md
SEEDS=${SEEDS:-0 1 2}
THREADS=${THREADS:-1 default}        # 'default': OMP_NUM_THREADS unset (torch's choice)

mkdir -p "$OUT"
for seed in $SEEDS; do
    for threads in $THREADS; do
        run="$OUT/seed${seed}_threads${threads}"
        start=$(date +%s)
        if [ "$threads" = default ]; then
            (unset OMP_NUM_THREADS; SEED=$seed DATA="$OUT/data_seed$seed" OUT="$run" \
                bash demo.sh --use_tensorboard false "$@") > "$run.log" 2>&1
        else
            OMP_NUM_THREADS=$threads SEED=$seed DATA="$OUT/data_seed$seed" OUT="$run" \
                bash demo.sh --use_tensorboard false "$@" > "$run.log" 2>&1
        fi
        echo "$(( $(date +%s) - start ))" > "$run/wall_seconds"
        echo "SEED=$seed threads=$threads: $(( $(date +%s) - start )) s ($run.log)"
    done
done
python tools/quickstart_table.py "$OUT" | tee "$OUT/table.md"
