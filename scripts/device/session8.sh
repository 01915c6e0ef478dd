#!/usr/bin/env bash
# One short device call (2026-12-06, eighth session; about 5 minutes of device time were left):
# the tensor-core tests that changed (gemm_coop, precision, linear, cast, planner_population;
# issue 24), the population plan step and world-model update against the number of agents
# (issue 21), MPPI through the C ABI beside Rust (issue 23). Each part is bounded so a short call still returns the
# first ones. Prepare: build pompc, pompc-capi and those test binaries, gzip them into .gpu/bin
# (see coop_tests.sh and capi_bench.sh); logs go to $OUT.
set -uo pipefail
out=${OUT:-/tmp}
timeout 150 bash scripts/device/coop_tests.sh > "$out/coop.log" 2>&1
grep -E "^== |test result|TENSOR-CORE|MISSING|coop_tests:|FAILED|panicked" "$out/coop.log" | head -60
for f in .gpu/bin/*.gz; do [ -e "$f" ] && gunzip -f "$f"; done
chmod +x .gpu/bin/*
echo "== population plan step: N agents of one environment each (coop, A = 6)"
for n in 1 4 16 64; do
  timeout 25 bash .gpu/run.sh .gpu/bin/pompc bench plan --agents "$n" --batch 1 --act 6 \
    --precision coop --runs 20 --warmup 5 2>&1 | tail -1
done | tee "$out/population_plan.log"
echo "== population world-model update: N agents' updates in one submit (5M, B = 256)"
for n in 1 4 16; do
  timeout 40 bash .gpu/run.sh .gpu/bin/pompc bench update --agents "$n" --batch 256 --runs 20 \
    --warmup 5 2>&1 | tail -1
done | tee "$out/population_update.log"
RUNS=200 timeout 60 bash scripts/device/capi_bench.sh 2>&1 | tail -24
