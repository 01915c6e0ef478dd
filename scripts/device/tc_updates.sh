#!/usr/bin/env bash
# Runs ON THE DEVICE (carry [".gpu"]): the updates' products on tensor cores
# (`--tensor-cores`, `--tensor-core-updates`) against f32, for issues 19 and 21.
#   PART=bench bash scripts/device/tc_updates.sh   # 5M updates B = 256 and a 16-agent 1M
#                                                  # population's, each way, alternated twice;
#                                                  # then the tensor-core update's profile
#   PART=loop  bash scripts/device/tc_updates.sh   # population_scaling.sh (small model, 1 and
#                                                  # 16 agents) without and with them
# Check correctness first: scripts/device/coop_tests.sh (train and policy_update compare both
# updates on tensor cores with PyTorch's fixtures). Needs .gpu/bin/pompc(.gz) of the same
# commit.
set -uo pipefail
[ -f .gpu/bin/pompc.gz ] && gunzip -f .gpu/bin/pompc.gz
chmod +x .gpu/bin/pompc
P=".gpu/run.sh .gpu/bin/pompc"
case "${PART:-bench}" in
  bench)
    for pass in 1 2; do
      for tc in "" --tensor-cores; do
        echo "== pass $pass ${tc:-f32}"
        bash $P bench update --size 5 --batch 256 --runs 40 $tc
        bash $P bench policy --size 5 --preset pompc --runs 40 $tc
        bash $P bench update --size 1 --batch 256 --agents 16 --runs 10 $tc
        bash $P bench policy --size 1 --preset pompc --agents 16 --runs 10 $tc
      done
    done
    echo "== profile, tensor cores"
    bash $P bench update --size 5 --batch 256 --profile --runs 10 --tensor-cores
    ;;
  loop)
    for extra in "" --tensor-core-updates; do
      AGENTS="${AGENTS:-1 16}" MODELS=small LOOP="${LOOP:-400}" EXTRA="$extra" \
        bash scripts/device/population_scaling.sh
    done
    ;;
  *) echo "PART: bench or loop"; exit 2 ;;
esac
