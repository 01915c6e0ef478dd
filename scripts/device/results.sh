#!/usr/bin/env bash
# Issue 8's learning curves on the H100, seeds as threads of one process per method:
#   rm -rf .gpu/bin/* && ../shared/gpu/prepare.sh target/release/pompc
# then the device with carry [".gpu"] and `bash scripts/device/results.sh ENV STEPS LIMIT_S`.
# Files come back as one tarball (the device returns at most 8 files). Throughput: runs
# sharing the H100 made about 150 small-model steps per second in all (GPU-bound, 2026-11-25;
# 127 for twelve runs in five processes on 2026-12-06),
# so 18 runs for 540 s get about 4500 steps each; METHODS="po-mpc --lambda 1|tdmpc2" narrows.
ENV=${1:-cartpole-swingup}; STEPS=${2:-100000}; LIMIT=${3:-540}
P="bash .gpu/run.sh .gpu/bin/pompc"
mkdir -p $OUT/runs
IFS='|' read -ra MS <<< "${METHODS:-tdmpc2|bmpc|tdmpc-square|po-mpc --lambda 0.1|po-mpc --lambda 1|po-mpc --lambda 9}"
for m in "${MS[@]}"; do
  $P train --env $ENV --method $m --seeds 0,1,2 --model small --steps $STEPS --eval-every 5000 \
    --time-limit $LIMIT --out $OUT/runs --quiet > "$OUT/runs/$(echo $m | tr -d ' -').log" 2>&1 &
done
wait
rm -f $OUT/runs/*.ckpt.safetensors
for f in $OUT/runs/*.csv; do echo "$f: $(grep ^eval $f | cut -d, -f2,5 | tr '\n' ' ')"; done
cd $OUT && tar czf runs.tgz runs && rm -rf runs
