#!/usr/bin/env bash
# Fills .gpu/ for one of the two device calls that the open measurements need, here (network,
# Rust), and checks that the carried tree fits the 64 MiB a call carries. Run from the
# repository root, then call the device with carry [".gpu"] and the command it prints.
#
#   scripts/device/prepare_next.sh measure  # about 8 minutes: the tensor-core tests (checked
#       and trusted) after the coop host refactor and the paired rollout layers; the plan step
#       with the rollout paired and not (issue 19); MPPI through the C ABI beside Rust (issue
#       23); the prepared MPPI steps against 3c780fb (issue 19); the PyTorch reference scripts
#       (issue 24)
#   scripts/device/prepare_next.sh dmc      # PO-MPC through the Python bindings on
#       dm_control's cartpole-swingup (issue 22), as long as a call lasts, checkpoints back
#
# `measure` builds 3c780fb's pompc in a scratch worktree (OLD_BIN=path skips that); `dmc` the
# cp312 wheels (scripts/device/py_wheels.sh; the device runs Python 3.12).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
what=${1:?"measure or dmc"}
tmp=/tmp/pompc-next-$what
rm -rf "$tmp" .gpu/bin .gpu/wheels && mkdir -p "$tmp"
strip_gz() { strip -o "$tmp/$2" "$1" && gzip -9 -f "$tmp/$2"; }
case "$what" in
  measure)
    cargo build --release -p pompc-cli -p pompc-capi
    old=${OLD_BIN:-}
    if [ -z "$old" ]; then
      wt=/tmp/pompc-old-3c780fb
      [ -d "$wt" ] || git worktree add -q --detach "$wt" 3c780fb
      (cd "$wt" && CARGO_TARGET_DIR=/tmp/pompc-old-target cargo build --release --bin pompc)
      old=/tmp/pompc-old-target/release/pompc
    fi
    strip_gz target/release/pompc pompc
    strip_gz "$old" pompc_old
    strip -o "$tmp/libpompc_c.so" target/release/libpompc_c.so
    gcc -O2 -std=c99 -Icapi/include capi/examples/mppi_bench.c -L"$tmp" -lpompc_c -lm \
      -Wl,-rpath,'$ORIGIN' -o "$tmp/mppi_bench"
    gzip -9 -f "$tmp/libpompc_c.so"
    for t in gemm_coop precision cast planner planner_fixture planner_extremes planner_population linear submits trainer; do
      b=$(cargo test --release --no-run --test "$t" 2>&1 |
        sed -n "s|.*Executable tests/$t.rs (\(.*\))|\1|p")
      [ -n "$b" ] || { echo "no test binary for $t" >&2; exit 1; }
      strip_gz "$b" "$t"
    done
    ../shared/gpu/prepare.sh "$tmp"/* >/dev/null
    pwd > .gpu/manifest_dir
    cmd='bash scripts/device/coop_tests.sh; PARTS="grouped capi old refs" bash scripts/device/session5.sh'
    ;;
  dmc)
    ../shared/gpu/prepare.sh >/dev/null
    bash scripts/device/py_wheels.sh
    rm -f .gpu/wheels/*cp310-cp310* .gpu/wheels/*cp311-cp311*
    cmd='PARTS=dmc TOTAL=575 bash scripts/device/session5.sh'
    ;;
  *) echo "measure or dmc, not $what" >&2; exit 2 ;;
esac
# A call carries the working tree too: tracked files and .gpu together under 64 MiB.
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
size=$(( $(du -sb .gpu | cut -f1) + tree ))
echo "carried: $((size / 1048576)) MiB of 64 (.gpu and the tracked tree)"
[ "$size" -lt $((63 * 1048576)) ] || { echo "too large to carry" >&2; exit 1; }
echo "device: carry [\".gpu\"]; command: $cmd"
