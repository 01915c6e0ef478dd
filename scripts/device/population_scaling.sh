#!/usr/bin/env bash
# Runs ON THE DEVICE: aggregate env-steps/s of `pompc train` populations against the number of
# agents (issue 21's scaling table), pendulum-swingup, PO-MPC lambda 1, on one device: the
# agents share their plan steps and their updates (one of each for all). Each runs
# one seed episode (500 steps), as many pre-training updates, then LOOP steps of the loop;
# the figure is the sum over agents of each one's loop rate (all agents' loops overlap, as they
# start together), and the population's wall time.
# The first run of a configuration on a fresh machine compiles the driver's pipelines inside the
# timed loop (the planner's are first used there): run each once untimed (WARM=1, the
# default) or compare only runs of a warm cache.
# Needs .gpu/bin/pompc (or pompc.gz). Usage: bash scripts/device/population_scaling.sh
# AGENTS ("1 4 16 32"), MODELS ("small 5"), LOOP (600), PRECISION (coop), WARM (1), EXTRA
# (more `pompc train` options, e.g. --tensor-core-updates).
set -uo pipefail
[ -f .gpu/bin/pompc.gz ] && gunzip -f .gpu/bin/pompc.gz
chmod +x .gpu/bin/pompc
AGENTS=${AGENTS:-1 4 16 32}
MODELS=${MODELS:-small 5}
LOOP=${LOOP:-600}
for model in $MODELS; do
  for n in $AGENTS; do
    seeds=$(seq -s, 0 $((n - 1)))
    out=/tmp/scaling/$model-$n
    rm -rf "$out" && mkdir -p /tmp/scaling
    if [ "${WARM:-1}" = 1 ]; then
      # Compiles (and caches) every pipeline of the configuration: seed phase, one update, a
      # few plan steps.
      timeout 120 bash .gpu/run.sh .gpu/bin/pompc train --env pendulum-swingup --method po-mpc \
        --model "$model" --precision "${PRECISION:-coop}" --seeds "$seeds" --steps 503 \
        --seed-steps 500 --eval-every 0 --quiet --out "$out-warm" ${EXTRA:-} >/dev/null 2>&1
    fi
    t0=$(date +%s.%N)
    timeout 300 bash .gpu/run.sh .gpu/bin/pompc train --env pendulum-swingup --method po-mpc \
      --model "$model" --precision "${PRECISION:-coop}" --seeds "$seeds" \
      --steps $((500 + LOOP)) --seed-steps 500 --eval-every 0 --out "$out" ${EXTRA:-} \
      >"$out.log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    sum=$(sed -n 's/.*loop after pre-training: .* (\([0-9.]*\) steps\/s.*/\1/p' "$out.log" |
      awk '{s += $1; n++} END {printf "%.1f over %d agents", s, n}')
    echo "model $model agents $n ${EXTRA:-} rc $rc: loop rates summed $sum; wall $(python3 -c "print(round($t1 - $t0, 1))") s"
    [ $rc -eq 0 ] || tail -5 "$out.log"
  done
done
