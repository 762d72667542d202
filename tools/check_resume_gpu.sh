#!/usr/bin/env bash
# Does a resumed run continue exactly where the uninterrupted one goes? Small model (64 px),
# --deterministic true, losses logged at every iteration: for each setting, 20 iterations in one
# go and 10 + a resume to 20, then the first iteration whose losses differ and the largest
# weight difference at 20. On the CPU both are exact (tests/test_training.py); on an H200 the
# resumed run drifted (docs/reproducibility.md). The settings include a fixed cuDNN workspace
# (CUDNN_CONV_WSCAP_DBG), the suspected cause. About 2 minutes on a GPU.
# Usage: bash tools/check_resume_gpu.sh [OUT]   (DEVICE=cpu: the same on the CPU; ONLY=a,b: those
# settings alone)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-runs/check_resume_gpu}}   # runs/ is ignored by git; emptied first
DEVICE=${DEVICE:-cuda}
rm -rf "$OUT" && mkdir -p "$OUT"
python synthetic.py --out "$OUT/data" --seed 0 --size 64 --n_healthy 48 --n_mixed 48 \
    --n_test_normal 8 --n_test_anomalous 8 > /dev/null
args() {  # the flags of one run writing under $OUT/$1
    echo --dataset Folder --image_dir "$OUT/data" --device "$DEVICE" --seed 0 --num_workers 2 \
        --use_tensorboard false --log_dir "$OUT/$1/logs" --model_save_dir "$OUT/$1/models" \
        --sample_dir "$OUT/$1/samples" --result_dir "$OUT/$1/results" --image_size 64 \
        --g_conv_dim 16 --d_conv_dim 16 --g_repeat_num 2 --d_repeat_num 4 --batch_size 8 \
        --num_iters 20 --model_save_step 10 --sample_step 10 --log_step 1 --deterministic true
}
# name|environment|flags
SETTINGS=("default||" "tf32_off||--tf32 false" "wscap256|CUDNN_CONV_WSCAP_DBG=256|"
          "wscap256_tf32_off|CUDNN_CONV_WSCAP_DBG=256|--tf32 false")
if [ -n "${ONLY:-}" ]; then  # ONLY=default,tf32_off: those settings alone
    kept=(); for s in "${SETTINGS[@]}"; do [[ ",$ONLY," == *",${s%%|*},"* ]] && kept+=("$s"); done
    SETTINGS=("${kept[@]}")
fi
for s in "${SETTINGS[@]}"; do
    IFS='|' read -r name envs flags <<< "$s"
    env $envs python main.py --mode train $(args "$name") $flags > "$OUT/$name.log" 2>&1 \
        || { echo "$name: training failed"; tail -3 "$OUT/$name.log"; continue; }
    mkdir -p "$OUT/${name}_resumed/models"
    cp "$OUT/$name/models/10-"* "$OUT/${name}_resumed/models/"
    env $envs python main.py --mode train $(args "${name}_resumed") $flags --resume_iters 10 \
        > "$OUT/${name}_resumed.log" 2>&1 || { echo "$name: resume failed"; tail -3 "$OUT/${name}_resumed.log"; }
done
python - "$OUT" "${SETTINGS[@]}" <<'PY' | tee "$OUT/summary.txt"
import json, sys
import torch
out, settings = sys.argv[1], [s.split('|')[0] for s in sys.argv[2:]]
for name in settings:
    try:
        runs = [{r['iter']: r for r in map(json.loads, open(f'{out}/{n}/logs/stats.jsonl'))}
                for n in (name, name + '_resumed')]
    except OSError as e:
        print(f'{name}: no result ({e})')
        continue
    first = next((i for i in range(11, 21) if any(
        runs[0][i][k] != runs[1][i][k] for k in runs[0][i]
        if k[:2] in ('D/', 'G/') and k in runs[1][i])), None)  # a resumed run logs G's terms from its first G step on
    worst = 0.0
    for net in ('G', 'D'):
        a = torch.load(f'{out}/{name}/models/20-{net}.ckpt', weights_only=True)
        b = torch.load(f'{out}/{name}_resumed/models/20-{net}.ckpt', weights_only=True)
        worst = max([worst] + [float((a[k].double() - b[k].double()).abs().max())
                               for k in a if 'running_' not in k])
    print(f'{name:18s} losses {"identical to 20" if first is None else f"first differ at {first}"}; '
          f'max |weight diff| at 20: {worst:.3g}')
PY
