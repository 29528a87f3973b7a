#!/usr/bin/env bash
# Batch-1 band parts over threads (convolution stack), and 1 vs 2 threads at batch 64, final binary.
set -u
cd "$(dirname "$0")"
b() { timeout 60 ./engine bench --model $1 --batch $2 --threads $3 --seconds 0.4 --warmup 5 --json 2>>$OUT/err.txt >> $OUT/final.jsonl; }
for round in 1 2; do
  for t in 1 2 4 16; do b convstack_s90.onnx 1 $t; done
  for m in lenet5-gmp90.sparse lenet5-gmp90-qat.sparse gmp90.sparse gmp90-qat.sparse; do for t in 1 2; do b $m 64 $t; done; done
  echo "round $round $(date +%T)"
done
