#!/usr/bin/env bash
# Issue 19 on the device, one call: the fused networks' tests on the card (tensor cores
# included), coop plans against f32, then side by side with the build of the session before
# (pompc_old) and PyTorch: the plan step at B = 1, 16 and 256 (fused networks on and off),
# a profile of the fused B = 1 step, classic MPPI, and lab shader variants.
# Prepare here first (test binaries from `cargo test --release --no-run`, stripped):
#   rm -rf .gpu/bin/* && ../shared/gpu/prepare.sh target/release/pompc
#   strip -o .gpu/bin/fused_mlp target/release/deps/fused_mlp-<hash>   (likewise planner)
#   a build of the commit before as .gpu/bin/pompc_old
# then the device with carry [".gpu"] and `bash scripts/device/issue19.sh`. Logs go to $OUT.
# TORCH=1 adds PyTorch's plan step; VARIANTS="dir ..." lab shader folders (POMPC_SHADER_DIR).
set -x
O=${OUT:-/tmp}
B=.gpu/bin
P="bash .gpu/run.sh"
# Test binaries read fixtures from the path they were built at.
mkdir -p /work && ln -sfn "$PWD" /work/main
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for t in ${TESTS:-fused_mlp planner}; do
  [ -x $B/$t ] && timeout 240 $P $B/$t --test-threads 1 2>&1 | tail -25 | tee $O/test-$t.log
done
timeout 90 $P $B/pompc bench plan --compare-precision --batch 1,16 --act 6 --precision coop \
  2>&1 | tee $O/compare.log
for pass in 1 2; do
  timeout 200 $P $B/pompc bench plan --precision coop,f32 --batch 1,16 --act 6 \
    --fused-rows 8192,0 --runs 40 --warmup 10 2>&1 | tee -a $O/plan.log
  [ -x $B/pompc_old ] && timeout 120 $P $B/pompc_old bench plan --precision coop,f32 \
    --batch 1,16 --act 6 --runs 40 --warmup 10 2>&1 | tee -a $O/plan-old.log
done
for bin in pompc pompc_old; do
  [ -x $B/$bin ] && timeout 120 $P $B/$bin bench plan --precision coop --batch 256 --act 6 \
    --runs 10 --warmup 3 2>&1 | tee -a $O/plan256.log
  [ -x $B/$bin ] && timeout 120 $P $B/$bin bench mppi --samples 128,1024,16384 --runs 50 \
    2>&1 | tee -a $O/mppi.log
done
for v in $VARIANTS; do
  POMPC_SHADER_DIR=$v timeout 120 $P $B/pompc bench plan --precision coop --batch 1,16 \
    --act 6 --runs 40 --warmup 10 2>&1 | tee $O/variant-$(basename $v).log
done
timeout 90 $P $B/pompc bench plan --profile --precision coop --batch 1 --act 6 --runs 5 \
  2>&1 | tee $O/profile.log
[ -n "$TORCH" ] && timeout 200 python3 benches/reference/plan_tdmpc2.py --batch 1 16 256 \
  --action-dim 6 --modes graph graph-tf32 --no-check 2>&1 | tee $O/torch.log
true
