#!/usr/bin/env bash
# The PyTorch reference scripts after they moved their shared layer, helpers and timing harness
# into benches/reference/common.py (issue 24): each one's float64 check against its own
# reference, then a few timed steps in every mode (eager, CUDA graph, torch.compile), small
# sizes. Needs torch with CUDA on the device; nothing of the Rust build. Run with the
# repository as the working directory: `bash scripts/device/references.sh`.
set -uo pipefail
R=benches/reference
timeout 200 python3 $R/plan_tdmpc2.py --batch 1 16 --action-dim 6 --modes eager graph compile \
  --iters 5 --warmup 2
timeout 200 python3 $R/update_tdmpc2.py --batch 16 --modes eager graph compile --iters 5 --warmup 2
timeout 250 python3 $R/policy_update.py --check-all --batch 16 --modes eager graph compile \
  --iters 5 --warmup 2
