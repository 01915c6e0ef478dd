#!/usr/bin/env bash
# Several training runs side by side on the device, resumable across calls on the same warm
# machine: checkpoints stay in target/devruns (ignored, so kept between calls), CSVs and logs
# come back as $OUT/runs.tgz. Each argument is one job "ENV|METHOD ARGS|SLUG|SEEDS|STEPS|EVAL_EVERY"
# (SLUG as in the file names pompc train writes: tdmpc2, bmpc, tdmpc-square, po-mpc-l1, ...);
# LIMIT (seconds, default 540) bounds every job. A job whose checkpoint exists resumes.
# The machine keeps target/devruns only while it stays warm (30 s idle at most, 30 minutes
# held). KEEP=1 also returns the checkpoints as $OUT/ckpt.part.* (15 MB pieces; the device
# returns at most 8 files of at most 16 MiB). To go on on a later machine, put the pieces in
# an ignored folder named in carry (say .ckpt) and start the call with
# `mkdir -p target/devruns && cat .ckpt/ckpt.part.* | tar xz -C target/devruns`. A
# small-model checkpoint is about 16 MB before compression (1.0M parameters, the target Q
# heads, both Adams' moments, a 30k-step buffer; by count), and a call carries at most 64 MiB
# with .gpu's ~26: keep two or three runs.
# Prepare here: rm -rf .gpu/bin/* && ../shared/gpu/prepare.sh target/release/pompc
LIMIT=${LIMIT:-540}
P="bash .gpu/run.sh .gpu/bin/pompc"
D=target/devruns; mkdir -p $D
for job in "$@"; do
  IFS='|' read -r env method slug seeds steps every <<< "$job"
  tag="$env-$slug-$(echo $seeds | tr , _)"
  resume=""
  [ -e "$D/$env-$slug-s${seeds%%,*}.ckpt.safetensors" ] && resume="--resume"
  $P train --env $env --method $method --seeds $seeds --model small --steps $steps \
    --eval-every $every --time-limit $LIMIT --out $D --quiet $resume >> "$D/$tag.log" 2>&1 &
done
wait
for f in $D/*.csv; do echo "$f: $(grep ^eval $f | cut -d, -f2,5 | tr '\n' ' ')"; done
tail -n 2 $D/*.log
mkdir -p $OUT/runs && cp $D/*.csv $D/*.log $OUT/runs/ && (cd $OUT && tar czf runs.tgz runs && rm -rf runs)
if [ "${KEEP:-0}" = 1 ]; then
  (cd $D && tar czf - *.ckpt.safetensors) | split -b 15M - $OUT/ckpt.part.
fi
