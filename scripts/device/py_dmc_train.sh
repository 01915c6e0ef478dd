#!/usr/bin/env bash
# Runs ON THE DEVICE (no network, no Rust): PO-MPC (lambda 1) through the Python bindings on
# dm_control's cartpole-swingup, the seeds as one population (pompc.Population), resumable
# across calls on one warm machine.
# Prepare here: ../shared/gpu/prepare.sh (Vulkan loaders into .gpu/gl) and
# scripts/device/py_wheels.sh (wheels into .gpu/wheels). Device call: carry [".gpu"],
#   bash .gpu/run.sh bash scripts/device/py_dmc_train.sh [SEEDS] [STEPS]
# SEEDS "0,1,2" and STEPS 100000 by default.
#
# Time: END (epoch seconds) is when this script must have returned, install, training, final
# checkpoint and results included; without END, LIMIT seconds (default 530) from its start.
# Give the call's timeout some slack past END: a command killed at its limit returns none of
# its files. Training stops RESERVE seconds (default 60) before END: an evaluation under way
# (ten episodes) finishes and the checkpoint is written in that time.
# MODEL (default small; 5 is TD-MPC2's), PRECISION (planner: f32, f16, coop; default f32),
# EVALS (episodes per evaluation, default 10) every EVAL_EVERY steps (default 10000),
# QUICK=1 (the trainer's quick setting, for CPU adapters), WHEELS (default .gpu/wheels).
#
# The host's python3 is itself a virtual environment (PyTorch's, which brings numpy), so the
# wheels go into a --target folder on PYTHONPATH, not into a venv of its own (a venv's
# --system-site-packages would see the base interpreter's packages, without numpy). That
# folder, the checkpoints and the logs live in PYDMC_DIR (default /tmp/pompc-pydmc), outside
# the repository's copy, so a later call on the same warm machine resumes whatever happens to
# the copied tree. A fresh machine starts over: three small-model agents' checkpoint (about
# 17 MB each plus their replay buffers) does not fit beside .gpu in the 64 MiB a call carries;
# KEEP=1 still returns it as $OUT/ckpt.part.* for inspection. Progress goes to stdout (and
# train.log); CSVs (episode and eval returns, env-steps/s) and the log come back as
# $OUT/pydmc.tgz.
set -euo pipefail
T0=$(date +%s)
END=${END:-$(( T0 + ${LIMIT:-530} ))}
SEEDS=${1:-0,1,2}
STEPS=${2:-100000}
D=${PYDMC_DIR:-/tmp/pompc-pydmc}
WHEELS=${WHEELS:-.gpu/wheels}
mkdir -p "$D"
py=$(command -v python3)
echo "python: $($py --version 2>&1) at $py; state in $D; $(( END - T0 )) s to go"
if [ ! -e "$D/site/.complete" ]; then
  rm -rf "$D/site"
  "$py" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check \
    --find-links "$WHEELS" --target "$D/site" $(cat "$WHEELS/packages.txt")
  touch "$D/site/.complete"
  echo "wheels installed in $(( $(date +%s) - T0 )) s"
fi
export PYTHONPATH="$D/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 # progress reaches the call's output as it happens
export MUJOCO_GL=disable # no rendering: no OpenGL context needed
"$py" -c "import numpy, pompc; print('numpy', numpy.__version__, 'pompc', pompc.__version__, pompc.adapters())"
train=$(( END - $(date +%s) - ${RESERVE:-60} ))
status=0
if [ "$train" -lt 30 ]; then
  echo "only $train s left for training: not started"
  status=1
else
  echo "training for at most $train s"
  # A hard stop 10 s before END as well: a call killed at its limit returns nothing.
  timeout -k 5 $(( END - $(date +%s) - 10 )) "$py" scripts/device/py_dmc_run.py python/examples/train_dmc.py \
    --domain cartpole --task swingup --seeds "$SEEDS" --steps "$STEPS" --method po-mpc --lam 1 \
    --model "${MODEL:-small}" ${PRECISION:+--precision $PRECISION} --time-limit "$train" \
    --ckpt-every 5000 --eval-every "${EVAL_EVERY:-10000}" --eval-episodes "${EVALS:-10}" \
    --out "$D/runs" ${QUICK:+--quick} 2>&1 | tee -a "$D/train.log" || status=1
fi
for f in "$D"/runs/*-s*.csv; do
  [ -e "$f" ] || continue
  echo "$f: evals $(grep ^eval "$f" | cut -d, -f2,3 | tr '\n' ' ')"
  echo "  last env-steps/s: $(tail -n 1 "$f" | cut -d, -f5)"
done
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT/pydmc" && cp "$D"/runs/*.csv "$D"/*.log "$OUT/pydmc/" 2>/dev/null || true
  (cd "$OUT" && tar czf pydmc.tgz pydmc && rm -rf pydmc)
  if [ "${KEEP:-0}" = 1 ] && [ -d "$D/runs/ckpt" ]; then
    (cd "$D/runs" && tar czf - ckpt) | split -b 15M - "$OUT/ckpt.part."
  fi
fi
echo "py_dmc_train.sh: status $status after $(( $(date +%s) - T0 )) s"
exit $status
