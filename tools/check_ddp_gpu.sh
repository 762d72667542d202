#!/usr/bin/env bash
# GPU check of the torchrun path (one GPU, NCCL): about 2-3 minutes on one GPU.
#  1. a small run (64 px, 20 iterations, --deterministic true) with plain `python main.py` and
#     with `torchrun --standalone --nproc_per_node 1 main.py` (a group of one on NCCL, which runs
#     every collective of the multi-GPU path): the checkpoints must agree;
#  2. one process resumes the torchrun run's checkpoint at 10 and must reach the same 20 (on the
#     CPU; on a GPU the difference is printed: not bit for bit there, docs/reproducibility.md);
#  3. the seconds per iteration of the paper's model (256 px, batch 16) both ways.
# Several GPUs and several machines are not checked here. Usage: bash tools/check_ddp_gpu.sh [OUT]
# (DEVICE=cpu SPEED=0 runs steps 1-2 on the CPU with gloo: a dry run of this script.)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-runs/check_ddp_gpu}}   # runs/ is ignored by git; emptied first
DEVICE=${DEVICE:-cuda}
SPEED=${SPEED:-1}
BACKEND=$([ "$DEVICE" = cuda ] && echo nccl || echo gloo)
rm -rf "$OUT" && mkdir -p "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
TORCHRUN=(python -m torch.distributed.run --standalone --nproc_per_node 1)
python -c 'import sys, torch; print(torch.__version__, torch.version.cuda,
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")' \
    | tee "$OUT/device.txt"

python synthetic.py --out "$OUT/data" --seed 0 --size 256 --n_healthy 48 --n_mixed 48 \
    --n_test_normal 8 --n_test_anomalous 8 > "$OUT/synthetic.log"

args() {  # the flags of one run writing under $OUT/$1
    echo --dataset Folder --image_dir "$OUT/data" --device "$DEVICE" --seed 0 --num_workers 2 \
        --use_tensorboard false --log_dir "$OUT/$1/logs" --model_save_dir "$OUT/$1/models" \
        --sample_dir "$OUT/$1/samples" --result_dir "$OUT/$1/results"
}
SMALL=(--image_size 64 --g_conv_dim 16 --d_conv_dim 16 --g_repeat_num 2 --d_repeat_num 4
       --batch_size 8 --num_iters 20 --model_save_step 10 --sample_step 10 --log_step 5
       --deterministic true)

# 1. plain and torchrun (NCCL, one rank)
python main.py --mode train $(args plain) "${SMALL[@]}" > "$OUT/plain.log" 2>&1
"${TORCHRUN[@]}" main.py --mode train $(args nccl) "${SMALL[@]}" > "$OUT/nccl.log" 2>&1
grep -q "1 processes ($BACKEND)" "$OUT/nccl.log" || { echo "FAIL: no $BACKEND group"; exit 1; }
# 2. one process resumes the torchrun run at iteration 10
mkdir -p "$OUT/resumed/models"
cp "$OUT"/nccl/models/10-* "$OUT/resumed/models/"
python main.py --mode train $(args resumed) "${SMALL[@]}" --resume_iters 10 \
    > "$OUT/resumed.log" 2>&1
# testAUC through torchrun (rank 0 scores) and alone: the same AUROC
"${TORCHRUN[@]}" main.py --mode testAUC $(args nccl) --image_size 64 --g_conv_dim 16 \
    --g_repeat_num 2 --d_repeat_num 4 --test_iters 20 --report false --bootstrap 0 \
    > "$OUT/nccl_test.log" 2>&1
python main.py --mode testAUC $(args nccl) --image_size 64 --g_conv_dim 16 --g_repeat_num 2 \
    --d_repeat_num 4 --test_iters 20 --report false --bootstrap 0 \
    --result_dir "$OUT/nccl/results_alone" > "$OUT/alone_test.log" 2>&1

python - "$OUT" "$DEVICE" <<'EOF' | tee "$OUT/summary.txt"
import json, os, sys
import torch
out = sys.argv[1]
def diff(a, b, keys=lambda k: True):
    worst = 0.0
    for net in ('G', 'D'):
        x = torch.load(f'{out}/{a}/models/20-{net}.ckpt', weights_only=True)
        y = torch.load(f'{out}/{b}/models/20-{net}.ckpt', weights_only=True)
        worst = max([worst] + [float((x[k].double() - y[k].double()).abs().max())
                               for k in x if keys(k)])
    return worst
d1 = diff('plain', 'nccl')
# Parameters only: the AUCp scoring after each checkpoint moves G's (unused) InstanceNorm running
# statistics in the uninterrupted run but not in the resumed one (so for plain runs too).
d2 = diff('nccl', 'resumed', lambda k: 'running_' not in k)
auc = [json.load(open(f'{out}/nccl/{r}/metrics.json'))['image_AUROC']
       for r in ('results', 'results_alone')]
print(f'plain vs torchrun (1 rank, group of one), 20 iterations: max |diff| {d1:.3g}')
# On a GPU a resumed run is not bit for bit the uninterrupted one even with --deterministic
# true (H200, 2026-11-27: weights within 4e-9 after 10 resumed iterations, or a last-bit
# difference that Adam grows to 6e-4; docs/reproducibility.md): reported, not required there.
gpu = sys.argv[2] == 'cuda'
print(f'torchrun run vs one process resuming it at 10:  max |diff| {d2:.3g} (parameters)'
      + (' (not required on a GPU)' if gpu else ''))
print(f'testAUC AUROC torchrun {auc[0]:.6f}, one process {auc[1]:.6f}')
ok = d1 <= 1e-5 and (gpu or d2 <= 1e-5) and auc[0] == auc[1]
print('PASS' if ok else 'FAIL')
sys.exit(0 if ok else 1)
EOF

[ "$SPEED" = 1 ] || exit 0
# 3. speed of the paper's model, 60 iterations each way (the first 20 are warm-up)
BIG=(--image_size 256 --batch_size 16 --num_iters 60 --model_save_step 100000
     --sample_step 100000 --log_step 20)
python main.py --mode train $(args plain256) "${BIG[@]}" > "$OUT/plain256.log" 2>&1
"${TORCHRUN[@]}" main.py --mode train $(args nccl256) "${BIG[@]}" > "$OUT/nccl256.log" 2>&1
python - "$OUT" <<'EOF' | tee -a "$OUT/summary.txt"
import json, sys
out = sys.argv[1]
for run in ('plain256', 'nccl256'):
    rows = {r['iter']: r['time'] for r in map(json.loads, open(f'{out}/{run}/logs/stats.jsonl'))}
    print(f'{run}: {(rows[60] - rows[20]) / 40:.4f} s/iteration (iterations 21-60, 256 px, '
          f'batch 16, default model)')
EOF
