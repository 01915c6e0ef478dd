#!/usr/bin/env bash
# Runs ON THE DEVICE (carry [".gpu"]): the sixteenth session's plan-step options for issue 19,
# each against the default, alternated twice, at B = 1 and 16 (and 256 once), 5M, A = 6,
# tensor cores:
#   - POMPC_REFIT_STAGE=0: refit reads the kept actions and the refitted mean and std from
#     storage (before 11d2188) instead of workgroup memory (the default since 11d2188);
#   - POMPC_REFIT_SAMPLE=0: the next iteration's samples in a launch of their own (5 more
#     launches, the same plans), so a profile shows refit's two parts apart;
#   - POMPC_LINEAR_KPART=32 (and 64): narrow layers with few workgroups (the policy's 12-wide
#     head over 512 inputs, the Q heads' outputs) split K into parts of 32 (64) instead of 128,
#     up to 32 parts (not a default yet).
# Then a profile of each (each dispatch timed alone: read the shares, not the times).
# Prepare here: a stripped, gzipped target/release/pompc as .gpu/bin/pompc.gz. Logs to $OUT.
set -uo pipefail
log=${OUT:-/tmp}/plan_b1_ab.log
: > "$log"
[ -e .gpu/bin/pompc.gz ] && gunzip -f .gpu/bin/pompc.gz
chmod +x .gpu/bin/pompc
P=.gpu/bin/pompc
run() { echo "== $*" | tee -a "$log"; timeout 120 bash .gpu/run.sh "$@" 2>&1 | tee -a "$log"; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader | tee -a "$log"
# Clocks up before anything is timed.
timeout 60 bash .gpu/run.sh $P bench plan --precision coop --batch 16 --runs 200 >/dev/null 2>&1
variant() {
  unset POMPC_REFIT_STAGE POMPC_REFIT_SAMPLE POMPC_LINEAR_KPART
  [ "$1" != default ] && export "${1?}"
  echo "## $1" | tee -a "$log"
}
VARIANTS=${VARIANTS:-default POMPC_REFIT_STAGE=0 POMPC_REFIT_SAMPLE=0 POMPC_LINEAR_KPART=32 POMPC_LINEAR_KPART=64}
for pass in 1 2; do
  for v in $VARIANTS; do
    variant "$v"
    run $P bench plan --precision coop --batch 1,16 --act 6 --runs 60 --warmup 10
    [ $pass = 1 ] && run $P bench plan --precision coop --batch 256 --act 6 --runs 10 --warmup 3
  done
done
for v in $VARIANTS; do
  variant "$v"
  run $P bench plan --profile --precision coop --batch 1 --act 6 --runs 10 --warmup 3
done
true
