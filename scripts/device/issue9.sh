#!/usr/bin/env bash
# Issue 9 on the device: the tensor-core and f16 paths against their mirrors, their speed, and
# PyTorch's plan step in the same run, then the training loop's speed. Prepare here first:
#   cargo build --release && cargo test --release --no-run --test gemm_coop --test precision
#   mkdir -p /tmp/tb && cp target/release/deps/{gemm_coop,precision}-<hash> /tmp/tb/  (drop the hash)
#   rm -rf .gpu/bin/* && ../shared/gpu/prepare.sh target/release/pompc /tmp/tb/gemm_coop /tmp/tb/precision
# then call the device with carry [".gpu"] and `bash scripts/device/issue9.sh`.
set -x
P="bash .gpu/run.sh .gpu/bin/pompc"
[ -e /work/main ] || (mkdir -p /work && ln -s "$(pwd)" /work/main)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
$P info | grep -i "cooperative\|f16\|default"
timeout 120 bash .gpu/run.sh .gpu/bin/gemm_coop --nocapture 2>&1 | grep -v "^test adapter"
timeout 120 bash .gpu/run.sh .gpu/bin/precision --nocapture 2>&1 | grep -v "^test adapter"
$P bench linear --shape 2048x2048x2048 --runs 5 >/dev/null 2>&1   # clocks up
timeout 120 $P bench gemm --coop --sweep 2>&1 | grep -v "Q d\|dynamics d"
timeout 90 $P bench linear --precision f32,f16,coop
timeout 150 $P bench plan --precision f32,f16,coop --batch 1,16,256 --act 6
timeout 90 $P bench plan --compare-precision --batch 1,256 --act 6
timeout 150 python3 benches/reference/plan_tdmpc2.py --batch 1 16 256 --action-dim 6 --modes graph graph-tf32 --no-check
timeout 200 bash scripts/device/speed.sh "po-mpc --lambda 1"
