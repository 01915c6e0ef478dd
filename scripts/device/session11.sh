#!/usr/bin/env bash
# Runs ON THE DEVICE (carry [".gpu"], through .gpu/run.sh's loaders): what the open issues need
# from the card, the dm_control run first. PARTS picks what runs (default "dmc plan"):
#   dmc   PO-MPC (lambda 1) on dm_control's cartpole-swingup through the Python bindings, three
#         seeds as one population (scripts/device/py_dmc_train.sh), until the call's end; the
#         next call resumes from the state the script keeps in /tmp while the machine stays
#         warm (call again at once: a machine goes back after 30 s idle); 10 evaluation
#         episodes (TD-MPC2's count) every 20k steps, since the planner's evaluation steps
#         (5000 per evaluation, without updates) would be a quarter of the run every 10k;
#   plan  the 5M plan step at B = 1, 16 and 256 (coop; issue 19's regression check after the
#         GEMM's agent split), about 40 s, if the call still has the time.
# TOTAL (default 570) is the whole call's length in seconds, the install included: give the
# device call a timeout of TOTAL + 25 or more (a command killed at its limit returns nothing).
# Prepare here: ../shared/gpu/prepare.sh, scripts/device/py_wheels.sh (cp312 kept), the
# stripped pompc gzipped into .gpu/bin. A fresh machine cannot resume: the population's
# checkpoint (16.6 MB per small-model agent, Adam moments and targets included, plus 3.6 MB
# of replay buffer per 100k steps) and .gpu (26 MB) are more than a call carries (64 MiB), so
# the 100k-step run must fit the calls of one warm machine.
set -uo pipefail
T0=$(date +%s)
END=$(( T0 + ${TOTAL:-570} ))
PARTS=${PARTS:-dmc plan}
has() { [[ " $PARTS " == *" $1 "* ]]; }
for f in .gpu/bin/*.gz; do [ -e "$f" ] && gunzip -f "$f"; done
chmod +x .gpu/bin/* 2>/dev/null
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
if has dmc; then
  # The plan part's 45 s stay free when it is asked for too.
  dmc_end=$END
  has plan && dmc_end=$(( END - 45 ))
  echo "== dm_control training until $(( dmc_end - T0 )) s into the call"
  END=$dmc_end PRECISION=${PRECISION:-coop} EVALS=${EVALS:-10} EVAL_EVERY=${EVAL_EVERY:-20000} \
    bash scripts/device/py_dmc_train.sh 0,1,2 100000
fi
if has plan && [ $(( END - $(date +%s) )) -ge 40 ]; then
  echo "== pompc bench plan (5M, A = 6, coop)"
  timeout 60 .gpu/bin/pompc bench plan --precision coop --batch 1,16 --act 6 --runs 40 --warmup 10
  timeout 40 .gpu/bin/pompc bench plan --precision coop --batch 256 --act 6 --runs 10 --warmup 3
fi
echo "session11.sh: done after $(( $(date +%s) - T0 )) s"
