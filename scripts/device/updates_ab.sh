#!/usr/bin/env bash
# Runs ON THE DEVICE (carry [".gpu"]): the fifteenth session's two changes to the updates, for
# issues 19 and 21, before and after in one call:
#   - each normed layer's bias gradient in its LayerNorm gradients' column pass (a7a6c2d)
#     and the Q heads' latent gradient as one multiply of K segments: 168 + 88 -> 145 + 80
#     dispatches, always on: pompc_old (55eb9f6) against pompc;
#   - the K-split GEMM tiles (3938760) and the narrow column tile for one-chunk column sums
#     (8ef2449), opt-in when timed first (POMPC_GEMM_KSPLIT=1, POMPC_COLUMN_TILE=narrow) and
#     the default on GPUs since 549a513 (POMPC_GEMM_KSPLIT=0, POMPC_COLUMN_TILE=wide turn them
#     off): each variant below sets both variables, so it means the same with either build.
# PART=ab (default): old, new, new + split, new + narrow, new + both, alternated twice so
# drift shows: the 5M updates and a 16-agent 1M population's (issue 21). PART=detail: the GEMM
# sweep (every tile of the updates' shapes), both updates' profiles each way, and the
# updates' PyTorch fixtures and the GEMM tests with both experiments on (the tests' binaries,
# if prepared as in coop_tests.sh: train, policy_update, gemm, norm_act).
# Prepare here (strip and gzip keep the bundle small):
#   strip -o /tmp/ab/pompc target/release/pompc && gzip -9 /tmp/ab/pompc
#   strip -o /tmp/ab/pompc_old <a build of 55eb9f6> && gzip -9 /tmp/ab/pompc_old
#   (train and policy_update test binaries as coop_tests.sh says, optional)
#   rm -rf .gpu/bin/* && ../shared/gpu/prepare.sh /tmp/ab/*.gz && pwd > .gpu/manifest_dir
# then `bash scripts/device/updates_ab.sh`; everything is also written to $OUT/updates_ab.log.
set -uo pipefail
log=${OUT:-/tmp}/updates_ab.log
: > "$log"
for f in .gpu/bin/*.gz; do [ -e "$f" ] && gunzip -f "$f"; done
chmod +x .gpu/bin/* 2>/dev/null
run() { echo "== $*" | tee -a "$log"; timeout 120 bash .gpu/run.sh "$@" 2>&1 | tee -a "$log"; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader | tee -a "$log"
# Clocks up before anything is timed (a cold card runs its first passes slowly).
timeout 60 bash .gpu/run.sh .gpu/bin/pompc bench update --runs 200 >/dev/null 2>&1
variant() {
  bin=.gpu/bin/pompc
  [ "$1" = old ] && bin=.gpu/bin/pompc_old
  export POMPC_GEMM_KSPLIT=0 POMPC_COLUMN_TILE=wide
  case $1 in
    split) POMPC_GEMM_KSPLIT=1 ;;
    narrow) POMPC_COLUMN_TILE=narrow ;;
    both) POMPC_GEMM_KSPLIT=1 POMPC_COLUMN_TILE=narrow ;;
  esac
  echo "## $1 (POMPC_GEMM_KSPLIT=$POMPC_GEMM_KSPLIT POMPC_COLUMN_TILE=$POMPC_COLUMN_TILE)" \
    | tee -a "$log"
}
if [ "${PART:-ab}" = ab ]; then
  for pass in 1 2; do
    for v in old new split narrow both; do
      variant $v
      run $bin bench update --size 5 --batch 256 --runs 40 --warmup 10
      run $bin bench policy --size 5 --preset pompc --runs 40 --warmup 10
      run $bin bench update --size 1 --batch 256 --agents 16 --runs 10 --warmup 3
      run $bin bench policy --size 1 --preset pompc --agents 16 --runs 10 --warmup 3
    done
  done
  exit 0
fi
variant new
run .gpu/bin/pompc bench gemm --sweep --runs 50
for v in new both; do
  variant $v
  run .gpu/bin/pompc bench update --size 5 --batch 256 --profile --runs 10
  run .gpu/bin/pompc bench policy --size 5 --preset pompc --profile --runs 10
done
# The updates against PyTorch with both experiments on (the fixtures' tiny shapes take the
# split tiles only where choose_split does; the kernels' own tests cover every tile).
variant both
root=$(pwd)
built=$(cat .gpu/manifest_dir 2>/dev/null || echo /work/main)
if [ "$built" != "$root" ] && [ ! -e "$built" ]; then
  mkdir -p "$(dirname "$built")" && ln -s "$root" "$built"
fi
status=0
for t in train policy_update gemm norm_act; do
  [ -x .gpu/bin/$t ] || continue
  (cd "$built" && timeout 300 bash "$root/.gpu/run.sh" "$root/.gpu/bin/$t" --test-threads 1) \
    2>&1 | tee -a "$log" | grep -E "^test |test result" || true
  grep -q "FAILED\|panicked" "$log" && status=1
done
exit $status
