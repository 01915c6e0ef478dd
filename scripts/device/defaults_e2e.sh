#!/usr/bin/env bash
# Runs ON THE DEVICE (carry [".gpu"]): what 549a513's defaults on GPUs (the K-split GEMM tiles,
# the narrow column tile) give end to end, for issue 19's rows, each workload run with them
# off (POMPC_GEMM_KSPLIT=0 POMPC_COLUMN_TILE=wide: the kernels of before 549a513, one binary)
# and on (the default), alternated so that drift shows.
# PART=bench (default): the plan step at B = 1, 16 and 256, both 5M updates and classic MPPI.
# PART=loop: the training loop (5M, pendulum-swingup, PO-MPC lambda 1, --precision coop, STEPS
# default 4000, steps/s after step 2600), PyTorch's TF32 graphs of the plan step and the
# world-model update (TORCH=0 leaves them out), and the population scaling of the small model
# (AGENTS, default "1 16"; AGENTS= leaves it out).
# PROFILE=1 (default; part loop): profiles of the B = 1 plan step and both updates first;
# MPPI_AB=1 (default; part loop): classic MPPI with POMPC_MPPI_STAGE=0 and the default, twice.
# COOP=1 (either part) runs the tensor-core tests first (coop_tests.sh, if prepared).
# Prepare here: a stripped, gzipped target/release/pompc as .gpu/bin/pompc.gz (beside the
# coop_tests.sh bundle, if wanted), then `pwd > .gpu/manifest_dir`. Logs go to $OUT.
set -uo pipefail
O=${OUT:-/tmp}
log=$O/defaults_e2e.log
: > "$log"
[ -e .gpu/bin/pompc.gz ] && gunzip -f .gpu/bin/pompc.gz
chmod +x .gpu/bin/pompc
P=.gpu/bin/pompc
run() { echo "== $*" | tee -a "$log"; timeout "${TL:-120}" bash .gpu/run.sh "$@" 2>&1 | tee -a "$log"; }
variant() {
  case $1 in
    off) export POMPC_GEMM_KSPLIT=0 POMPC_COLUMN_TILE=wide ;;
    on) unset POMPC_GEMM_KSPLIT POMPC_COLUMN_TILE ;;
  esac
  echo "## $1" | tee -a "$log"
}
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader | tee -a "$log"
if [ "${COOP:-1}" = 1 ] && ls .gpu/bin/gemm_coop* >/dev/null 2>&1; then
  timeout 300 bash scripts/device/coop_tests.sh > "$O/coop_tests.txt" 2>&1
  echo "coop_tests.sh: rc $?" | tee -a "$log"
  grep -E "^== |test result|MISSING|coop_tests:" "$O/coop_tests.txt" | tail -60
fi
if [ "${PART:-bench}" = bench ]; then
  for pass in 1 2; do
    for v in off on; do
      variant $v
      run $P bench plan --precision coop --batch 1,16 --act 6 --runs 40 --warmup 10
      run $P bench plan --precision coop --batch 256 --act 6 --runs 10 --warmup 3
      run $P bench update --size 5 --batch 256 --runs 40 --warmup 10
      run $P bench policy --size 5 --preset pompc --runs 40 --warmup 10
      [ $pass = 1 ] && run $P bench mppi --samples 128,16384 --runs 50
    done
  done
  exit 0
fi
if [ "${PROFILE:-1}" = 1 ]; then
  # Where the GPU time goes with the defaults on: each dispatch timed alone.
  variant on
  run $P bench plan --profile --precision coop --batch 1 --act 6 --runs 10 --warmup 3
  run $P bench update --size 5 --batch 256 --profile --runs 10
  run $P bench policy --size 5 --preset pompc --profile --runs 10
fi
if [ "${MPPI_AB:-1}" = 1 ]; then
  # Classic MPPI with the rollout's staging in workgroup memory off and on, twice.
  for pass in 1 2; do
    for st in 0 1; do
      echo "## POMPC_MPPI_STAGE=$st" | tee -a "$log"
      POMPC_MPPI_STAGE=$st run $P bench mppi --samples 128,1024,16384 --runs 100
    done
  done
fi
rate() { # CSV: steps/s between the first training row after step $2 and the last row
  awk -F, -v from="$2" '$1=="train" && $2>=from && !t0 {t0=$4; s0=$2} END {if (t0) printf "%s: %d steps in %.1f s = %.1f steps/s\n", FILENAME, $2-s0, $4-t0, ($2-s0)/($4-t0)}' "$1"
}
for v in off on; do
  variant $v
  rm -rf /tmp/loop-$v
  TL=150 run $P train --env pendulum-swingup --method po-mpc --lambda 1 --precision coop \
    --model 5 --steps "${STEPS:-4000}" --eval-every 0 --out /tmp/loop-$v --quiet
  for f in /tmp/loop-$v/*.csv; do rate "$f" 2600 | tee -a "$log"; done
done
variant on
if [ "${TORCH:-1}" = 1 ]; then
  echo "== torch" | tee -a "$log"
  timeout 150 python3 benches/reference/plan_tdmpc2.py --batch 1 16 256 --action-dim 6 \
    --modes graph-tf32 --no-check 2>&1 | tail -5 | tee -a "$log"
  timeout 100 python3 benches/reference/update_tdmpc2.py --modes graph-tf32 --no-check 2>&1 \
    | tail -4 | tee -a "$log"
fi
[ -n "${AGENTS-1 16}" ] && for v in off on; do
  variant $v
  AGENTS=${AGENTS:-1 16} MODELS=small LOOP=${LOOP:-600} \
    timeout 400 bash scripts/device/population_scaling.sh 2>&1 | tail -8 | tee -a "$log"
done
true
