#!/usr/bin/env bash
# Runs ON THE DEVICE (carry [".gpu"], through .gpu/run.sh's loaders): the session of
# 2026-12-07 (tenth). PARTS picks what runs (default "plan dmc"):
#   plan  the 5M plan step at B = 1, 16 and 256 (coop) after the GEMM's agent split and the
#         shared evaluations (issue 19's regression check), about 40 s;
#   dmc   PO-MPC (lambda 1) on dm_control's cartpole-swingup through the Python bindings, three
#         seeds as one population, until TOTAL seconds (default 575) after the start
#         (scripts/device/py_dmc_train.sh); the next call resumes from target/pydmc while the
#         machine is still warm (call again within its idle time, PARTS=dmc).
# Prepare here: ../shared/gpu/prepare.sh, scripts/device/py_wheels.sh (cp312 kept), the
# stripped pompc gzipped into .gpu/bin. A fresh machine cannot resume: the population's
# checkpoint (about 17 MB per small-model agent, Adam moments and targets included, plus
# 3.6 MB of replay buffer per 100k steps) and .gpu (26 MB) are more than a call carries
# (64 MiB), so the 100k-step run must fit the calls of one warm machine (about 1100 s).
set -uo pipefail
T0=$(date +%s)
PARTS=${PARTS:-plan dmc}
has() { [[ " $PARTS " == *" $1 "* ]]; }
for f in .gpu/bin/*.gz; do [ -e "$f" ] && gunzip -f "$f"; done
chmod +x .gpu/bin/* 2>/dev/null
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
if has plan; then
  echo "== pompc bench plan (5M, A = 6, coop)"
  timeout 120 .gpu/bin/pompc bench plan --precision coop --batch 1,16 --act 6 --runs 40 --warmup 10
  timeout 120 .gpu/bin/pompc bench plan --precision coop --batch 256 --act 6 --runs 10 --warmup 3
fi
has dmc || exit 0
left=$(( ${TOTAL:-575} - ($(date +%s) - T0) ))
echo "== dm_control training for ${left} s"
LIMIT=$(( left - 40 )) PRECISION=coop EVALS=${EVALS:-10} \
  bash scripts/device/py_dmc_train.sh 0,1,2 100000
