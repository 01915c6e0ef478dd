#!/usr/bin/env bash
# Issue 19's table in one call: the build before (pompc_old) and after (pompc) side by side with
# PyTorch: the plan step at B = 1, 16 and 256, the world-model and policy updates, classic
# MPPI, and the training loop (5M, pendulum, PO-MPC lambda 1, --precision coop).
# Prepare here first:
#   rm -rf .gpu/bin/* && ../shared/gpu/prepare.sh target/release/pompc
#   a build of the commit before as .gpu/bin/pompc_old (same preparation)
# then the device with carry [".gpu"] and `bash scripts/device/issue19.sh`. Logs go to $OUT.
# STEPS (default 4000: 2500 seed steps and pre-training, then timed steps) sets the loop's length.
O=${OUT:-/tmp}
B=.gpu/bin
P="bash .gpu/run.sh"
BINS=${BINS:-pompc pompc_old}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for bin in $BINS; do
  echo "== $bin plan"
  timeout 120 $P $B/$bin bench plan --precision coop,f32 --batch 1,16 --act 6 --runs 40 \
    --warmup 10 2>&1 | tee -a $O/plan-$bin.log
  timeout 60 $P $B/$bin bench plan --precision coop --batch 256 --act 6 --runs 10 --warmup 3 \
    2>&1 | tail -1 | tee -a $O/plan-$bin.log
done
for bin in $BINS; do
  echo "== $bin plan B = 1, second pass"
  timeout 60 $P $B/$bin bench plan --precision coop --batch 1 --act 6 --runs 40 --warmup 10 \
    2>&1 | tail -1 | tee -a $O/plan-$bin.log
done
for bin in $BINS; do
  echo "== $bin updates and MPPI"
  timeout 60 $P $B/$bin bench update --runs 20 --warmup 5 2>&1 | tee -a $O/update-$bin.log
  timeout 60 $P $B/$bin bench policy --preset pompc --runs 20 --warmup 5 2>&1 | tee -a $O/update-$bin.log
  timeout 60 $P $B/$bin bench mppi --samples 128,16384 --runs 50 2>&1 | tee -a $O/mppi-$bin.log
done
rate() { # CSV: steps/s between the first training row after step $2 and the last row
  awk -F, -v from="$2" '$1=="train" && $2>=from && !t0 {t0=$4; s0=$2} END {if (t0) printf "%s: %d steps in %.1f s = %.1f steps/s\n", FILENAME, $2-s0, $4-t0, ($2-s0)/($4-t0)}' "$1"
}
for bin in $BINS; do
  echo "== $bin loop"
  timeout 120 $P $B/$bin train --env pendulum-swingup --method po-mpc --lambda 1 --precision coop \
    --model 5 --steps ${STEPS:-4000} --eval-every 0 --out $O/loop-$bin --quiet >/dev/null 2>&1
  for f in $O/loop-$bin/*.csv; do rate $f 2600; done
done
echo "== torch"
timeout 150 python3 benches/reference/plan_tdmpc2.py --batch 1 16 256 --action-dim 6 \
  --modes graph-tf32 --no-check 2>&1 | tail -5 | tee $O/torch-plan.log
timeout 120 python3 benches/reference/update_tdmpc2.py --modes graph-tf32 --no-check 2>&1 \
  | tail -4 | tee $O/torch-update.log
true
