#!/usr/bin/env bash
# Issue 19 on the device: the fused networks' tests on the card (tensor cores included), the
# coop plans against f32, then the plan step at B = 1 and 16 with the fused networks on and
# off, a profile of the fused B = 1 step and PyTorch's plan step, all in one call.
# Prepare here first (test binaries from `cargo test --release --no-run`):
#   rm -rf .gpu/bin/* && ../shared/gpu/prepare.sh target/release/pompc \
#     target/release/deps/fused_mlp-* target/release/deps/planner-*   (the executables)
# then the device with carry [".gpu"] and `bash scripts/device/issue19.sh`. Logs go to $OUT.
set -x
O=${OUT:-/tmp}
B=.gpu/bin
# Test binaries read fixtures from the path they were built at.
mkdir -p /work && ln -sfn "$PWD" /work/main
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for t in ${TESTS:-fused_mlp planner}; do
  timeout 240 bash .gpu/run.sh $B/$t --test-threads 1 2>&1 | tail -25 | tee $O/test-$t.log
done
timeout 90 bash .gpu/run.sh $B/pompc bench plan --compare-precision --batch 1,16 --act 6 \
  --precision coop 2>&1 | tee $O/compare.log
timeout 240 bash .gpu/run.sh $B/pompc bench plan --precision coop,f32 --batch 1,16 --act 6 \
  --fused-rows ${FUSED:-0,8192} --runs 40 --warmup 10 2>&1 | tee $O/plan.log
# VARIANTS="dir1 dir2": the fused coop step again with POMPC_SHADER_DIR set to each (lab
# versions of the shaders).
for v in $VARIANTS; do
  POMPC_SHADER_DIR=$v timeout 120 bash .gpu/run.sh $B/pompc bench plan --precision coop \
    --batch 1,16 --act 6 --runs 40 --warmup 10 2>&1 | tee $O/variant-$(basename $v).log
done
timeout 90 bash .gpu/run.sh $B/pompc bench plan --profile --precision coop --batch 1 --act 6 \
  --runs 5 2>&1 | tee $O/profile.log
[ -n "$TORCH" ] && timeout 150 python3 benches/reference/plan_tdmpc2.py --batch 1 16 \
  --action-dim 6 --modes graph-tf32 --no-check 2>&1 | tee $O/torch.log
true
