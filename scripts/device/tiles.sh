#!/usr/bin/env bash
# The plan step with two builds on one machine (issue 9, item 5): BINS (default "pompc"), each
# prepared into .gpu/bin under that name, alternated twice at B = 256; then the tile sweep of
# the planner's layer, B = 1 and 16 at coop and f32, and PyTorch's plan step in the same call.
# Prepare here first:
#   rm -rf .gpu/bin/* && ../shared/gpu/prepare.sh target/release/pompc [other builds]
# then the device with carry [".gpu"] and `BINS="pompc pompc_x" bash scripts/device/tiles.sh`.
# Everything is also written under $OUT.
set -x
O=${OUT:-/tmp}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
bash .gpu/run.sh .gpu/bin/pompc bench linear --shape 2048x2048x2048 --runs 5 >/dev/null 2>&1   # clocks up
for pass in 1 2; do
  for bin in ${BINS:-pompc}; do
    timeout 90 bash .gpu/run.sh .gpu/bin/$bin bench plan --precision coop --batch 256 --act 6 \
      --runs 20 --warmup 5 2>&1 | tee -a $O/plan256-$bin.log
  done
done
timeout 120 bash .gpu/run.sh .gpu/bin/pompc bench linear --shape 131072x512x512 --ln --act mish \
  --precision coop --sweep --runs 20 2>&1 | tee $O/sweep.log
# VARIANTS="dir1 dir2": the planner's layer again with POMPC_SHADER_DIR set to each (lab
# versions of the shaders, which need not be correct).
for v in $VARIANTS; do
  POMPC_SHADER_DIR=$v timeout 60 bash .gpu/run.sh .gpu/bin/pompc bench linear \
    --shape 131072x512x512 --ln --act mish --precision coop --runs 20 2>&1 | tee $O/variant-$(basename $v).log
done
timeout 60 bash .gpu/run.sh .gpu/bin/pompc bench linear --shape 131072x101x512 --precision coop \
  --sweep --runs 20 2>&1 | tee $O/sweep101.log
timeout 120 bash .gpu/run.sh .gpu/bin/pompc bench plan --precision coop,f32,coop,f32 --batch 16,1 \
  --act 6 --runs 40 --warmup 10 2>&1 | tee $O/plan-small.log
timeout 150 python3 benches/reference/plan_tdmpc2.py --batch 1 16 256 --action-dim 6 \
  --modes graph graph-tf32 --no-check 2>&1 | tee $O/torch.log
