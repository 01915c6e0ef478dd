#!/usr/bin/env bash
# Runs ON THE DEVICE (no network, no Rust): PO-MPC (lambda 1) through the Python bindings on
# dm_control's cartpole-swingup, the seeds as one population (pompc.Population), resumable
# across calls.
# Prepare here: ../shared/gpu/prepare.sh (Vulkan loaders into .gpu/gl) and
# scripts/device/py_wheels.sh (wheels into .gpu/wheels). Device call: carry [".gpu"],
#   bash .gpu/run.sh bash scripts/device/py_dmc_train.sh [SEEDS] [STEPS]
# SEEDS "0,1,2" and STEPS 100000 by default; LIMIT (seconds, default 530) bounds each call,
# MODEL (default small; 5 is TD-MPC2's), PRECISION (planner: f32, f16, coop; default f32),
# EVALS (episodes per evaluation, default 10, every 10k steps). The venv,
# checkpoints and logs live in target/pydmc (ignored, so kept while the machine stays warm;
# a fresh machine starts over: three small-model agents' checkpoint, about 17 MB each plus
# their replay buffers, does not fit beside .gpu in the 64 MiB a call carries; KEEP=1
# still returns it as $OUT/ckpt.part.* for inspection). CSVs (episode and eval returns, env-steps/s) and logs come back as
# $OUT/pydmc.tgz; a summary is printed.
set -euo pipefail
SEEDS=${1:-0,1,2}
STEPS=${2:-100000}
LIMIT=${LIMIT:-530}
D=target/pydmc
mkdir -p "$D"
py=$(command -v python3)
echo "python: $($py --version 2>&1) at $py"
if [ ! -x "$D/venv/bin/python" ]; then
  # The host's numpy (PyTorch's) is reused; everything else comes from the carried wheels.
  $py -m venv --system-site-packages "$D/venv"
  "$D/venv/bin/pip" install -q --no-index --find-links .gpu/wheels --no-deps \
    $(cat .gpu/wheels/packages.txt)
fi
export MUJOCO_GL=disable # no rendering: no OpenGL context needed
"$D/venv/bin/python" -c "import numpy, pompc; print('numpy', numpy.__version__, 'pompc', pompc.__version__, pompc.adapters())"
status=0
"$D/venv/bin/python" scripts/device/py_dmc_run.py python/examples/train_dmc.py \
  --domain cartpole --task swingup --seeds "$SEEDS" --steps "$STEPS" --method po-mpc --lam 1 \
  --model "${MODEL:-small}" ${PRECISION:+--precision $PRECISION} --time-limit "$LIMIT" \
  --ckpt-every 5000 --eval-every 10000 --eval-episodes "${EVALS:-10}" --out "$D/runs" \
  >> "$D/train.log" 2>&1 || status=1
for f in "$D"/runs/seed*.csv; do
  echo "$f: evals $(grep ^eval "$f" | cut -d, -f2,3 | tr '\n' ' ')"
  echo "  last env-steps/s: $(tail -n 1 "$f" | cut -d, -f5)"
done
tail -n 5 "$D"/train.log
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT/pydmc" && cp "$D"/runs/*.csv "$D"/*.log "$OUT/pydmc/" 2>/dev/null || true
  (cd "$OUT" && tar czf pydmc.tgz pydmc && rm -rf pydmc)
  if [ "${KEEP:-0}" = 1 ]; then
    (cd "$D/runs" && tar czf - ckpt) | split -b 15M - "$OUT/ckpt.part."
  fi
fi
exit $status
