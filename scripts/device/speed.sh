#!/usr/bin/env bash
# The whole loop's speed on the device (issue 8, item 5): the 5M preset, one environment, alone on
# the GPU, 5000 steps (2500 seed steps and pre-training, then 2500 timed). Prepare here first:
#   rm -rf .gpu/bin/* && ../shared/gpu/prepare.sh target/release/pompc
# then the device with carry [".gpu"] and `bash scripts/device/speed.sh`. Prints steps per second
# after the seed phase and pre-training (from the CSV's wall clock). BINS="pompc pompc_old" times
# several builds in turn (each prepared into .gpu/bin under that name), for a before/after on one
# machine.
D=${OUT:-/tmp}/speed; mkdir -p $D
rate() { # CSV: steps/s between the first training row after step $2 and the last row
  awk -F, -v from="$2" '$1=="train" && $2>=from && !t0 {t0=$4; s0=$2} END {if (t0) printf "%s: %d steps in %.1f s = %.1f steps/s\n", FILENAME, $2-s0, $4-t0, ($2-s0)/($4-t0)}' "$1"
}
for bin in ${BINS:-pompc}; do
  P="bash .gpu/run.sh .gpu/bin/$bin"
  for m in "${@:-po-mpc --lambda 1}"; do
    tag=$bin-$(echo $m | tr -d ' -')
    timeout 150 $P train --env pendulum-swingup --method $m --model 5 --steps 5000 --eval-every 0 \
      --out $D/$tag --quiet >/dev/null 2>&1
    for f in $D/$tag/*.csv; do rate $f 3000; done
  done
done
