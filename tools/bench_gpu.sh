#!/usr/bin/env bash
# GPU speed of the paper's configuration (256 px, batch 16, every model flag at its default), each
# fast path on and off, plus checks of the CUDA training path: about 9 minutes on an H200.
#  1. tools/benchmark.py, eager variants: the original's loop (torch's TF32 defaults, and strict
#     fp32), this project's plain step, and the fast paths but compile, together and (1b) alone;
#  2. tools/benchmark.py with torch.compile: the original's loop again (the same machine, minutes
#     later), --fast true (compile included), the same without channels_last and with gp_explicit;
#  3. tools/check_ddp_gpu.sh without its speed part (plain vs torchrun on NCCL, resume, testAUC);
#  4. a short `main.py` training run with --fast true (compile off) on synthetic images, resumed,
#     then testAUC;
#  5. tools/check_resume_gpu.sh: where a resumed run leaves the uninterrupted one.
# Each stage has its own time limit (seconds: STAGE1, STAGE1B, STAGE2, STAGE3, STAGE4 for each of
# stage 4's three runs, STAGE5) so a slow compilation cannot take the others' results with it.
# Measured on an H200 (2026-11-27): stages 1, 1b and 2 took 66, 54 and 90 s (torch.compile: 46 s;
# stage 2 has had two more variants since), stage 3 about 100 s, stage 4 about 60 s; stage 5 is
# newer (about 2 minutes expected). Writes 8 files to OUT. Usage: bash tools/bench_gpu.sh [OUT]
# (DEVICE=cpu SIZE=32 TINY=1: a dry run of the whole script on the CPU with a tiny model.)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-runs/bench_gpu}}   # runs/ is ignored by git
mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}
export PYTHONUNBUFFERED=1
export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-$(nproc)}
MODEL=(--image_size "${SIZE:-256}" --batch_size 16 --device "$DEVICE")
[ "${TINY:-0}" = 1 ] && MODEL+=(--g_conv_dim 8 --d_conv_dim 8 --g_repeat_num 1 --d_repeat_num 3)
ROUNDS=(--rounds "${ROUNDS:-5}" --cycles "${CYCLES:-2}")
FAST_EAGER=amp_bf16+channels_last+adam_fused+reuse_fake+merge_critic+tf32   # --fast, compile off
status=0
SCRATCH=$(mktemp -d)   # stages 3 and 4 write their runs here; only their logs go to OUT
trap 'rm -rf "$SCRATCH"' EXIT

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null
  python -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
    "cudnn", torch.backends.cudnn.version(), torch.cuda.get_device_name(0)
    if torch.cuda.is_available() else "no GPU")'; date -u; } 2>&1 | tee "$OUT/gpu.txt"

bench() {  # bench NAME LIMIT VARIANTS [FLAGS]: one tools/benchmark.py run -> $OUT/NAME.{log,json}
    local name=$1 limit=$2 variants=$3; shift 3
    timeout "$limit" python tools/benchmark.py "${MODEL[@]}" "${ROUNDS[@]}" --variants "$variants" \
        --json_out "$OUT/$name.json" "$@" > "$OUT/$name.log" 2>&1 \
        || { echo "$name failed ($?)"; status=1; }
    grep -v '^USDT' "$OUT/$name.log" | sed -n '/^variant/,$p'
}

echo "== 1. eager: the original's loop, the plain step, --fast without compile"
bench eager "${STAGE1:-120}" "original,original_fp32,default,$FAST_EAGER"
echo "== 1b. eager: each fast path alone"
bench single "${STAGE1B:-110}" original,tf32,channels_last,amp_bf16,amp_fp16,adam_fused,reuse_fake+merge_critic,gp_explicit \
    --no_flops

echo "== 2. compiled: --fast true, the original's loop again beside it"
# fast without channels_last too: alone, channels_last slowed the fp32 step (0.92x on an H200);
# and with gp_explicit (on in the CPU preset, not yet timed on a GPU)
bench compiled "${STAGE2:-300}" \
    "original,original_fp32,fast,${FAST_EAGER/channels_last+/}+compile,fast+gp_explicit" \
    --warmup 2

echo "== 3. torchrun / NCCL check (small model)"
DEVICE=$DEVICE SPEED=0 timeout "${STAGE3:-150}" bash tools/check_ddp_gpu.sh "$SCRATCH/ddp_check" \
    > "$OUT/checks.log" 2>&1 || { echo "stage 3 failed ($?)"; status=1; tail -5 "$SCRATCH"/ddp_check/*.log; }
tail -5 "$OUT/checks.log"

echo "== 4. main.py --fast true (compile off): train 30, resume to 40, testAUC"
R=$SCRATCH/fast_run
rm -rf "$R" && python synthetic.py --out "$R/data" --seed 0 --size 64 --n_healthy 32 --n_mixed 32 \
    --n_test_normal 8 --n_test_anomalous 8 > /dev/null
run() {
    timeout "${STAGE4:-45}" python main.py --dataset Folder --image_dir "$R/data" --device "$DEVICE" \
        --image_size 64 --g_conv_dim 16 --d_conv_dim 16 --g_repeat_num 2 --d_repeat_num 4 \
        --batch_size 8 --model_save_step 10 --sample_step 10 --log_step 10 --num_workers 2 \
        --use_tensorboard false --fast true --compile false --log_dir "$R/logs" \
        --model_save_dir "$R/models" --sample_dir "$R/samples" --result_dir "$R/results" "$@"
}
{ run --mode train --num_iters 30 && run --mode train --num_iters 40 --resume_iters 30 &&
  run --mode testAUC --test_iters latest --bootstrap 0 --report false; } > "$SCRATCH/fast_run.log" 2>&1 \
    || { echo "stage 4 failed ($?)"; status=1; }
tr '\r' '\n' < "$SCRATCH/fast_run.log" | tee -a "$OUT/checks.log" \
    | grep -aiE '^Elapsed|AUROC|error|warning|Traceback' | cut -c1-140 | tail -8
echo "== 5. resumed vs uninterrupted runs, with and without a fixed cuDNN workspace"
DEVICE=$DEVICE timeout "${STAGE5:-180}" bash tools/check_resume_gpu.sh "$SCRATCH/resume" \
    >> "$OUT/checks.log" 2>&1 || { echo "stage 5 failed ($?)"; status=1; }
cat "$SCRATCH/resume/summary.txt" 2>/dev/null
exit $status
