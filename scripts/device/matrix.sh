#!/usr/bin/env bash
# Runs ON THE DEVICE (carry [".gpu"], through .gpu/run.sh's loaders): a part of issue 21's
# matrix as one population of `pompc train`, resumable across calls on one warm machine.
#   bash .gpu/run.sh bash scripts/device/matrix.sh
# ENV (default pendulum-swingup), METHODS (default tdmpc2,bmpc,tdmpc-square,po-mpc with
# PO-MPC's LAMBDAS 0.1,1,9: the six settings), SEEDS (default 0), STEPS (default 100000),
# MODEL (small), PRECISION (coop), EVAL_EVERY (12500: evaluations at 25k, 50k and 100k) and
# EVAL_EPISODES (5; each evaluation's plan steps carry no update, so 5 episodes every 12.5k
# steps add about a tenth to the run's plan steps).
#
# Why in parts: a fresh machine cannot resume a population (its checkpoint is about 17 MB per
# small-model agent, more than a call carries beside .gpu), and a machine is held for at most
# 30 minutes, so each part must reach STEPS within the calls of one warm machine: at most about
# 1400 s of training in a session's 1800 s of device time. Measured (RESULTS.md, the matrix's
# first part): five agents in one population train at 69 steps/s each, 1450 s to 100k, and
# reached 97 500 of it; so at most four agents per part (METHODS and LAMBDAS choose them, e.g.
# METHODS=tdmpc2,po-mpc), BMPC's agent beside them as its own population only if fewer.

# Across sessions (PACK=1): the state comes back as $OUT/state.tgz.part-N (at most 15 MiB each);
# put them in .matrix/ENV/ here (ignored by git) and carry [".gpu", ".matrix"]: a machine
# without state of its own unpacks them and resumes. A call carries at most 64 MiB in all (the
# tree, .gpu, the parts) and brings back at most 8 files, 64 MiB together: two small-model
# agents (about 20 MB each with 100k steps of replay) fit, three do not reliably.

# Time: END (epoch seconds) is when this script must have returned; without END, LIMIT
# seconds (default 560) from its start. Give the device call's timeout some slack past END
# (a command killed at its limit returns none of its files). Training stops RESERVE seconds
# (default 45; enough for the first part's calls) before END: `--time-limit` stops at the first episode end after it (or within
# the pre-training, every 50 updates), and an evaluation under way finishes first.
# The state (checkpoints, CSVs, logs) lives in MATRIX_DIR (default /tmp/pompc-matrix/ENV),
# outside the copied tree; the CSVs and the log come back as $OUT/matrix-ENV.tgz.
set -uo pipefail
T0=$(date +%s)
END=${END:-$(( T0 + ${LIMIT:-560} ))}
ENV=${ENV:-pendulum-swingup}
D=${MATRIX_DIR:-/tmp/pompc-matrix/$ENV}
P=${POMPC:-.gpu/bin/pompc}
[ -e "$P.gz" ] && gunzip -f "$P.gz"
chmod +x "$P" 2>/dev/null
mkdir -p "$D"
# A part carried in from an earlier session (PACK below): unpacked where this machine has none.
C=${CARRIED:-.matrix/$ENV}
if ! ls "$D"/*.ckpt.safetensors >/dev/null 2>&1 && ls "$C"/state.tgz.part-* >/dev/null 2>&1; then
  cat "$C"/state.tgz.part-* | tar xzf - -C "$D" &&
    echo "state unpacked from $C: $(ls "$D"/*.ckpt.safetensors | wc -l) checkpoints"
fi
methods=${METHODS:-tdmpc2,bmpc,tdmpc-square,po-mpc}
limit=$(( END - $(date +%s) - ${RESERVE:-45} ))
echo "matrix part: $ENV, methods $methods, seeds ${SEEDS:-0}; state in $D; training for at most $limit s"
# One `pompc train` population per group: BMPC's reanalysis keeps its agents off the shared
# dispatches (a population holding one runs every agent on its own thread), so BMPC trains
# as a second population beside the others, on the same card.
has_checkpoint() { # TAG: whether the group has saved (later calls resume it)
  local f
  for f in "$D"/*.ckpt.safetensors; do
    [ -e "$f" ] || continue
    case $(basename "$f") in
      *-bmpc-s*) [ "$1" = bmpc ] && return 0 ;;
      *) [ "$1" = shared ] && return 0 ;;
    esac
  done
  return 1
}
run_group() { # METHODS TAG
  local resume=()
  has_checkpoint "$2" && resume=(--resume)
  local lam=()
  [[ ",$1," == *,po-mpc,* ]] && lam=(--lambda "${LAMBDAS:-0.1,1,9}")
  echo "$2: ${resume[*]:-fresh}"
  # A hard stop 10 s before END as well: a call killed at its limit returns nothing.
  timeout -k 5 $(( END - $(date +%s) - 10 )) "$P" train --env "$ENV" --method "$1" "${lam[@]}" --seeds "${SEEDS:-0}" \
    --steps "${STEPS:-100000}" --model "${MODEL:-small}" --precision "${PRECISION:-coop}" \
    --eval-every "${EVAL_EVERY:-12500}" --eval-episodes "${EVAL_EPISODES:-5}" \
    --checkpoint-every 5000 --time-limit "$limit" --out "$D" --quiet "${resume[@]}" \
    ${QUICK:+--quick} >> "$D/$2.log" 2>&1
  local rc=$?
  echo "$2: rc $rc"; tail -n 2 "$D/$2.log"
  return $rc
}
status=0
if [ "$limit" -lt 30 ]; then
  echo "too little time left: not started"
  status=1
else
  others=$(echo "$methods" | tr ',' '\n' | grep -vx bmpc | paste -sd, -)
  pids=()
  [ -n "$others" ] && { run_group "$others" shared & pids+=($!); }
  [[ ",$methods," == *,bmpc,* ]] && { run_group bmpc bmpc & pids+=($!); }
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
fi
for f in "$D"/*.csv; do
  [ -e "$f" ] || continue
  echo "$(basename "$f"): evals $(grep ^eval "$f" | cut -d, -f2,5 | tr '\n' ' ')"
done
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT/matrix-$ENV" && cp "$D"/*.csv "$D"/*.log "$OUT/matrix-$ENV/" 2>/dev/null
  (cd "$OUT" && tar czf "matrix-$ENV.tgz" "matrix-$ENV" && rm -rf "matrix-$ENV")
fi
if [ "${PACK:-0}" = 1 ] && [ -n "${OUT:-}" ]; then
  # The whole state (checkpoints with their replay, CSVs, logs) back in parts of at most 15
  # MiB, since a file that comes back is at most 16 MiB and all of them together 64.
  tar czf - -C "$D" . | split -b 15m -d -a 1 - "$OUT/state.tgz.part-"
  echo "state packed: $(ls "$OUT"/state.tgz.part-* | wc -l) parts, $(du -cb "$OUT"/state.tgz.part-* | tail -1 | cut -f1) bytes"
fi
echo "matrix.sh: status $status after $(( $(date +%s) - T0 )) s"
exit $status
