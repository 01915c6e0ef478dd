#!/usr/bin/env bash
# The tests of the tensor-core (cooperative-matrix) kernels on the GPU host, which CI cannot
# run: lavapipe and GL have no cooperative matrices, so there those tests only check that
# tensor cores are refused and the f32 fallback runs. Run this whenever shaders/gemm_coop.wgsl,
# shaders/linear_coop.wgsl, shaders/common/coop_gemm.wgsl, shaders/common/linear_io.wgsl,
# shaders/cast.wgsl or their Rust sides (src/kernels/{gemm_coop,linear,cast}.rs, the training
# products' routing in src/train/mlp.rs) change.
#
# Every test runs with checked and with trusted shader modules (tests/common::gpus() opens the
# adapter both ways) and canary guards after every buffer. gemm_coop and precision must report
# their TENSOR-CORE path in both modes, or this fails even when the tests pass (a device
# without cooperative matrices would pass them through their refusal branch). The other
# binaries, if prepared, run too: cast (the f16 weights a tensor-core planner gets), train and
# policy_update (the updates with their products on tensor cores against PyTorch; they must
# report that path too when prepared), and the planner and trainer tests, which plan at f32
# and f16 there but on NVIDIA's compiler and subgroup size.
#
# Prepare here, from the repository root (test binaries are named by hash; strip and gzip keep
# them under the 64 MiB that a call carries; gemm_coop and precision alone also fit unzipped):
#   T="gemm_coop precision cast train policy_update planner planner_fixture planner_extremes planner_population linear submits trainer"
#   rm -rf /tmp/coop && mkdir -p /tmp/coop
#   for t in $T; do
#     b=$(cargo test --release --no-run --test $t 2>&1 | sed -n "s|.*Executable tests/$t.rs (\(.*\))|\1|p")
#     strip -o /tmp/coop/$t "$b" && gzip -9 /tmp/coop/$t
#   done
#   rm -rf .gpu/bin/* && ../shared/gpu/prepare.sh /tmp/coop/*.gz && pwd > .gpu/manifest_dir
# then call the device with carry [".gpu"] and `bash scripts/device/coop_tests.sh`.
# Output: the tests' own, and $OUT/coop_tests.log (all of it) where OUT is set. Exit status 0
# only if every test passed and the tensor-core paths ran.
set -uo pipefail
root=$(pwd)
log=${OUT:-/tmp}/coop_tests.log
: > "$log"
say() { echo "$@" | tee -a "$log"; }

# The binaries find tests/fixtures through the path they were built in: point it here.
built=$(cat .gpu/manifest_dir 2>/dev/null || echo /work/main)
if [ "$built" != "$root" ] && [ ! -e "$built" ]; then
  mkdir -p "$(dirname "$built")" && ln -s "$root" "$built"
fi

bin=/tmp/coop-bin
rm -rf "$bin" && mkdir -p "$bin"
for f in .gpu/bin/*; do
  case "$f" in
    *.gz) gunzip -c "$f" > "$bin/$(basename "$f" .gz)" ;;
    *) cp "$f" "$bin/" ;;
  esac
done
chmod +x "$bin"/*
say "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1)"
unset POMPC_PRECISION POMPC_SHADER_DIR

fail=0
for t in gemm_coop precision cast train policy_update planner planner_fixture planner_extremes planner_population linear submits trainer; do
  [ -x "$bin/$t" ] || { say "== $t: not prepared, skipped"; continue; }
  say "== $t"
  # --nocapture: the tests print which path (tensor cores or fallback) they ran.
  timeout 240 bash .gpu/run.sh "$bin/$t" --nocapture 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || { say "== $t FAILED (exit $rc)"; fail=1; }
done

# The tensor-core paths ran, in both check modes.
for mode in Checked Trusted; do
  for want in "gemm_coop: TENSOR-CORE path.*shaders=$mode" \
              "linear coop: TENSOR-CORE path.*shaders=$mode" \
              "model at coop: .*($mode checks)"; do
    if ! grep -q "$want" "$log"; then
      say "MISSING: no line matching '$want': the tensor-core path did not run"
      fail=1
    fi
  done
  # The updates' products on tensor cores (train, policy_update), where prepared.
  if [ -x "$bin/train" ] && ! grep -q "products at tensor cores.*shaders=$mode" "$log"; then
    say "MISSING: the world-model update did not run on tensor cores ($mode)"
    fail=1
  fi
  if [ -x "$bin/policy_update" ] && ! grep -q "on tensor cores: error" "$log"; then
    say "MISSING: the policy update did not run on tensor cores"
    fail=1
  fi
done
[ -x "$bin/gemm_coop" ] && [ -x "$bin/precision" ] || { say "gemm_coop and precision must be prepared"; fail=1; }
say "coop_tests: $([ $fail = 0 ] && echo PASSED || echo FAILED)"
exit $fail
