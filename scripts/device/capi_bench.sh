#!/usr/bin/env bash
# The classic-MPPI step through the C ABI on the GPU host, beside the same step in Rust (issue
# 23: the overhead of the boundary, for BENCHMARKS.md). Both time the differential drive of
# DiffDriveScene::benchmark at horizon 100 with trusted WGSL, median wall clock over timed
# runs after a warm-up of at least a second: capi/examples/mppi_bench.c through libpompc_c.so,
# and `pompc bench mppi`. They alternate, twice each, in one call, so a drift of the card shows.
#
# Prepare here, from the repository root (the C program finds libpompc_c.so beside itself):
#   cargo build --release --bin pompc -p pompc-capi
#   mkdir -p /tmp/capi && strip -o /tmp/capi/libpompc_c.so target/release/libpompc_c.so
#   gcc -O2 -std=c99 -Icapi/include capi/examples/mppi_bench.c -L/tmp/capi -lpompc_c -lm \
#     -Wl,-rpath,'$ORIGIN' -o /tmp/capi/mppi_bench
#   strip -o /tmp/capi/pompc target/release/pompc
#   rm -rf .gpu/bin/* && ../shared/gpu/prepare.sh /tmp/capi/*
# then call the device with carry [".gpu"] and `bash scripts/device/capi_bench.sh`.
# Output: both tables per round, also in $OUT/capi_bench.log where OUT is set. RUNS (300) and
# SAMPLES (128 16384) override the defaults.
set -uo pipefail
log=${OUT:-/tmp}/capi_bench.log
: > "$log"
runs=${RUNS:-300}
samples=${SAMPLES:-128 16384}
say() { echo "$@" | tee -a "$log"; }
say "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1)"
unset POMPC_PRECISION POMPC_SHADER_DIR
status=0
for round in 1 2; do
  say "== round $round: C ABI (mppi_bench) =="
  bash .gpu/run.sh .gpu/bin/mppi_bench -r "$runs" -w 1 $samples 2>&1 | tee -a "$log" || status=1
  say "== round $round: Rust (pompc bench mppi) =="
  bash .gpu/run.sh .gpu/bin/pompc bench mppi --samples "${samples// /,}" --runs "$runs" \
    --warmup 50 2>&1 | tee -a "$log" || status=1
done
exit $status
