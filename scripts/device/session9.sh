#!/usr/bin/env bash
# One device call for 2026-12-07 (ninth session): what every open issue still needs from the
# H100, most needed first, each part bounded and the whole call within TOTAL seconds (570), so
# that a call cut short still returns the first parts:
#   coop   the tensor-core tests, checked and trusted (issue 24; scripts/device/coop_tests.sh)
#   loop   aggregate env-steps/s of PO-MPC populations of the small model, plan steps and
#          updates shared, against the number of agents (issue 21;
#          scripts/device/population_scaling.sh)
#   parts  the population plan step, world-model and policy update (5M) alone against the
#          number of agents
#   capi   classic MPPI through the C ABI beside Rust (issue 23; scripts/device/capi_bench.sh)
#   loop5  the loop's scaling with the 5M model, for what time is left
# Prepare: `OLD_BIN=... scripts/device/prepare_next.sh measure` (binaries gzipped in .gpu/bin).
# PARTS (default "coop loop parts capi loop5") picks what runs.
set -uo pipefail
T0=$(date +%s)
out=${OUT:-/tmp}
PARTS=${PARTS:-coop loop parts capi loop5}
has() { [[ " $PARTS " == *" $1 "* ]]; }
# Seconds a part may take: its cap, or what is left of the call.
budget() {
  local left=$(( ${TOTAL:-570} - ($(date +%s) - T0) ))
  [ "$left" -lt "$1" ] && echo "$left" || echo "$1"
}
run_for() { local s; s=$(budget "$1"); shift; [ "$s" -gt 5 ] && timeout "$s" "$@"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1
if has coop; then
  run_for 170 bash scripts/device/coop_tests.sh > "$out/coop.log" 2>&1
  echo "coop_tests rc $?"
  grep -E "^== |test result|TENSOR-CORE|MISSING|coop_tests:|FAILED|panicked" "$out/coop.log" | head -60
fi
for f in .gpu/bin/*.gz; do [ -e "$f" ] && gunzip -f "$f"; done
chmod +x .gpu/bin/*
if has loop; then
  echo "== population loop, small model (pendulum-swingup, PO-MPC lambda 1, coop planner)"
  AGENTS="1 4 16 32" MODELS=small LOOP=300 run_for 160 \
    bash scripts/device/population_scaling.sh 2>&1 | tee "$out/population_loop.log"
fi
if has parts; then
  echo "== population plan step (coop, A 6, B 1 per agent)"
  for n in 1 4 16 32; do
    run_for 20 bash .gpu/run.sh .gpu/bin/pompc bench plan --agents "$n" --batch 1 --act 6 \
      --precision coop --runs 20 --warmup 5 2>&1 | tail -1
  done | tee "$out/population_plan.log"
  for what in update policy; do
    echo "== population $what (5M, B 256, one submit for all)"
    for n in 1 4 16 32; do
      extra=""; [ $what = policy ] && extra="--preset pompc"
      echo "agents $n: $(run_for 25 bash .gpu/run.sh .gpu/bin/pompc bench $what $extra \
        --agents "$n" --batch 256 --runs 20 --warmup 5 2>&1 | tail -1)"
    done | tee "$out/population_$what.log"
  done
fi
if has capi; then
  RUNS=200 run_for 80 bash scripts/device/capi_bench.sh 2>&1 | tail -24
fi
if has loop5; then
  echo "== population loop, 5M model"
  AGENTS="1 4 16" MODELS=5 LOOP=200 run_for 600 \
    bash scripts/device/population_scaling.sh 2>&1 | tee "$out/population_loop5.log"
fi
echo "session9: $(( $(date +%s) - T0 )) s"
