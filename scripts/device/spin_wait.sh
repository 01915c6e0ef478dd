#!/usr/bin/env bash
# Read-back waits that poll before they sleep (GpuOptions::spin_wait) and pooled read-back
# buffers, against the build before (pompc_old): the round-trip floor, classic MPPI and the
# small plan steps, where the host's wait is a visible part of the wall time.
# Prepare here: rm -rf .gpu/bin/* && ../shared/gpu/prepare.sh target/release/pompc, and the
# build before as .gpu/bin/pompc_old; then the device with carry [".gpu"] and
# `bash scripts/device/spin_wait.sh`.
B=.gpu/bin
P="bash .gpu/run.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
nproc
run() { # label, env, binary, args...
  local label=$1 env=$2 bin=$3; shift 3
  echo "== $label"
  env $env timeout 120 $P $B/$bin "$@" 2>&1 | grep -v "^adapter"
}
for pass in 1 2; do
  run "old mppi ($pass)" "X=1" pompc_old bench mppi --samples 128,16384 --runs 200
  run "new, no spin, mppi ($pass)" "POMPC_SPIN_WAIT_US=0" pompc bench mppi --samples 128,16384 --runs 200
  run "new, default spin, mppi ($pass)" "X=1" pompc bench mppi --samples 128,16384 --runs 200
done
for pass in 1 2; do
  run "old plan ($pass)" "X=1" pompc_old bench plan --precision coop --batch 1,16 --act 6 --runs 40 --warmup 10
  run "new, no spin, plan ($pass)" "POMPC_SPIN_WAIT_US=0" pompc bench plan --precision coop --batch 1,16 --act 6 --runs 40 --warmup 10
  run "new, default spin, plan ($pass)" "X=1" pompc bench plan --precision coop --batch 1,16 --act 6 --runs 40 --warmup 10
done
echo "== where the updates' GPU time goes (batch 256)"
timeout 200 $P $B/update_timing 256 --profile 2>&1 | grep -v "^adapter"
