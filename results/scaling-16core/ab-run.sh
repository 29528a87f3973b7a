#!/usr/bin/env bash
# Old (bbef091) against new engine at batch 64 over thread counts, alternating, on the 16-core machine.
set -u
cd "$(dirname "$0")"
b() { timeout 60 ./engine-$1 bench --model $2 --batch $3 --threads $4 --seconds 0.3 --warmup 20 --json 2>>$OUT/err.txt | sed "s/^{/{\"bin\":\"$1\",/" >> $OUT/ab.jsonl; }
for round in 1 2 3; do
  for m in gmp90.sparse stack8x256_s90.onnx lenet5-gmp90.sparse lenet5-gmp90-block4-qat.sparse lenet5-gmp90-qat.sparse gmp90-qat.sparse lenet5-gmp90-block4.sparse; do
    for t in 1 2 4 8 16; do for v in old new; do b $v $m 64 $t; done; done
  done
  for t in 1 2 16; do for v in old new; do b $v lenet5-gmp90-qat.sparse 1024 $t; done; done
  echo "round $round $(date +%T)"
done
