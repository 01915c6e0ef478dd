#!/usr/bin/env bash
# One device call for 2026-12-07 (ninth session): what every open issue still needs from the
# H100, most needed first, each part bounded so that a call cut short still returns the first:
#   coop   the tensor-core tests, checked and trusted (issue 24; scripts/device/coop_tests.sh)
#   loop   aggregate env-steps/s of PO-MPC populations, plan steps and updates shared, against
#          the number of agents (issue 21; scripts/device/population_scaling.sh)
#   parts  the population plan step, world-model and policy update alone against the number of
#          agents
#   capi   classic MPPI through the C ABI beside Rust (issue 23; scripts/device/capi_bench.sh)
# Prepare: `OLD_BIN=... scripts/device/prepare_next.sh measure` (binaries gzipped in .gpu/bin).
# PARTS (default "coop loop parts capi"), AGENTS and MODELS (for loop) pick what runs.
set -uo pipefail
out=${OUT:-/tmp}
PARTS=${PARTS:-coop loop parts capi}
has() { [[ " $PARTS " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1
if has coop; then
  timeout ${COOP_LIMIT:-200} bash scripts/device/coop_tests.sh > "$out/coop.log" 2>&1
  echo "coop_tests rc $?"
  grep -E "^== |test result|TENSOR-CORE|MISSING|coop_tests:|FAILED|panicked" "$out/coop.log" | head -60
fi
for f in .gpu/bin/*.gz; do [ -e "$f" ] && gunzip -f "$f"; done
chmod +x .gpu/bin/*
if has loop; then
  echo "== population loop (pendulum-swingup, PO-MPC lambda 1, coop planner)"
  AGENTS=${AGENTS:-1 4 16 32} MODELS=${MODELS:-small} LOOP=${LOOP:-300} \
    bash scripts/device/population_scaling.sh 2>&1 | tee "$out/population_loop.log"
fi
if has parts; then
  echo "== population plan step (coop, A 6, B 1 per agent)"
  for n in 1 4 16 32; do
    timeout 25 bash .gpu/run.sh .gpu/bin/pompc bench plan --agents "$n" --batch 1 --act 6 \
      --precision coop --runs 20 --warmup 5 2>&1 | tail -1
  done | tee "$out/population_plan.log"
  echo "== population world-model update (B 256)"
  for s in 1 5; do
    for n in 1 4 16 32; do
      echo "size $s agents $n: $(timeout 40 bash .gpu/run.sh .gpu/bin/pompc bench update \
        --size "$s" --agents "$n" --batch 256 --runs 20 --warmup 5 2>&1 | tail -1)"
    done
  done | tee "$out/population_update.log"
  echo "== population policy update (PO-MPC lambda 1, B 256)"
  for s in 1 5; do
    for n in 1 4 16 32; do
      echo "size $s agents $n: $(timeout 40 bash .gpu/run.sh .gpu/bin/pompc bench policy \
        --preset pompc --size "$s" --agents "$n" --batch 256 --runs 20 --warmup 5 2>&1 | tail -1)"
    done
  done | tee "$out/population_policy.log"
fi
if has capi; then
  RUNS=200 timeout 90 bash scripts/device/capi_bench.sh 2>&1 | tail -24
fi
