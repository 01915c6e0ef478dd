#!/usr/bin/env bash
# One device call for 2026-12-06's fifth session: the MPPI step through the C ABI beside Rust
# (issue 23) with the build before the session (pompc_old: 3c780fb) for the prepared MPPI
# steps, the PyTorch reference scripts after their common.py (issue 24), then PO-MPC through
# the Python bindings on dm_control's cartpole-swingup for what is left of the call (issue
# 22), checkpoints returned. Part `grouped` (issue 19): the plan step with the rollout's
# dynamics and reward layers paired (POMPC_GROUPED_ROLLOUT=1) against apart, alternating, in
# the same call. Binaries come gzipped in .gpu/bin; wheels in .gpu/wheels (cp312).
# scripts/device/prepare_next.sh does the preparation below (and checks the size). By hand,
# here (the carried tree must stay under 64 MiB):
#   cargo build --release --workspace && mkdir -p /tmp/capi
#   strip -o /tmp/capi/libpompc_c.so target/release/libpompc_c.so
#   gcc -O2 -std=c99 -Icapi/include capi/examples/mppi_bench.c -L/tmp/capi -lpompc_c -lm \
#     -Wl,-rpath,'$ORIGIN' -o /tmp/capi/mppi_bench
#   strip -o /tmp/capi/pompc target/release/pompc; a build of 3c780fb, stripped, as pompc_old
#   rm -rf .gpu/bin/* && ../shared/gpu/prepare.sh && bash scripts/device/py_wheels.sh
#   rm -f .gpu/wheels/*cp310-cp310* .gpu/wheels/*cp311-cp311*   (the device runs Python 3.12)
#   for f in libpompc_c.so pompc pompc_old; do gzip -9 -c /tmp/capi/$f > .gpu/bin/$f.gz; done
#   cp /tmp/capi/mppi_bench .gpu/bin/
# then the device with carry [".gpu"] and e.g. PARTS="capi old" bash scripts/device/session5.sh
T0=$(date +%s)
for f in .gpu/bin/*.gz; do gunzip -f "$f"; done
chmod +x .gpu/bin/*
python3 --version; ldd --version | head -1
# PARTS (default "grouped capi old refs dmc") picks what runs.
PARTS=${PARTS:-grouped capi old refs dmc}
has() { [[ " $PARTS " == *" $1 "* ]]; }
has grouped && for pass in 1 2; do
  for g in 0 1; do
    echo "== pompc bench plan, POMPC_GROUPED_ROLLOUT=$g, pass $pass"
    POMPC_GROUPED_ROLLOUT=$g timeout 120 bash .gpu/run.sh .gpu/bin/pompc bench plan \
      --precision coop,f32 --batch 1,16 --act 6 --runs 40 --warmup 10
  done
done
has capi && bash scripts/device/capi_bench.sh
has old && for pass in 1 2; do
  echo "== pompc_old (3c780fb) bench mppi, pass $pass"
  bash .gpu/run.sh .gpu/bin/pompc_old bench mppi --samples 128,16384 --runs 300 --warmup 50
done
R=benches/reference
has refs && timeout 60 python3 $R/plan_tdmpc2.py --batch 1 --action-dim 6 --modes eager graph --iters 5 --warmup 2 2>&1 | tail -6
has refs && timeout 60 python3 $R/update_tdmpc2.py --batch 16 --modes eager graph --iters 5 --warmup 2 2>&1 | tail -6
has refs && timeout 60 python3 $R/policy_update.py --batch 16 --modes eager graph --iters 5 --warmup 2 2>&1 | tail -6
has dmc || exit 0
left=$(( ${TOTAL:-575} - ($(date +%s) - T0) ))
echo "== dm_control training for ${left} s"
LIMIT=$(( left - 45 )) KEEP=1 MODEL=5 PRECISION=coop bash .gpu/run.sh bash scripts/device/py_dmc_train.sh 0,1,2 100000
