#!/usr/bin/env bash
# One device call (2026-12-06, seventh session), most important first, each part bounded so
# that a short call still returns the first ones: the population plan step against the
# number of agents (issue 21), the rollout's dynamics and reward layers paired or not
# (issue 19), MPPI through the C ABI beside Rust (issue 23), the PyTorch reference scripts
# (issue 24). Run scripts/device/coop_tests.sh before it in the same call. Prepare with
# scripts/device/prepare_next.sh measure; logs go to $OUT when set.
set -uo pipefail
out=${OUT:-/tmp}
for f in .gpu/bin/*.gz; do [ -e "$f" ] && gunzip -f "$f"; done
chmod +x .gpu/bin/*
pompc() { bash .gpu/run.sh .gpu/bin/pompc "$@"; }

echo "== population plan step: N agents of one environment each, one step (coop, A = 6)"
for n in 1 4 16 32 64; do
  timeout 60 pompc bench plan --agents "$n" --batch 1 --act 6 --precision coop --runs 20 \
    --warmup 5 2>&1 | tail -1
done | tee "$out/population_plan.log"
echo "== the same at f32, 1 and 16 agents"
for n in 1 16; do
  timeout 60 pompc bench plan --agents "$n" --batch 1 --act 6 --precision f32 --runs 20 \
    --warmup 5 2>&1 | tail -1
done | tee -a "$out/population_plan.log"

echo "== training populations (shared plan steps): small model, pendulum-swingup"
AGENTS="1 4 16" MODELS=small LOOP=200 timeout 200 bash scripts/device/population_scaling.sh \
  2>&1 | tee "$out/population_train.log"

timeout 100 bash scripts/device/capi_bench.sh 2>&1 | tee "$out/capi.log" | tail -30

for pass in 1 2; do
  for g in 0 1; do
    echo "== pompc bench plan, POMPC_GROUPED_ROLLOUT=$g, pass $pass"
    POMPC_GROUPED_ROLLOUT=$g timeout 90 bash .gpu/run.sh .gpu/bin/pompc bench plan \
      --precision coop --batch 1,16 --act 6 --runs 40 --warmup 10 2>&1 | tail -2
  done
done | tee "$out/grouped.log"


R=benches/reference
for s in "plan_tdmpc2.py --batch 1 --action-dim 6" "update_tdmpc2.py --batch 16" \
  "policy_update.py --batch 16"; do
  echo "== $s"
  timeout 60 python3 $R/$s --modes eager graph --iters 5 --warmup 2 2>&1 | tail -6
done | tee "$out/refs.log"
