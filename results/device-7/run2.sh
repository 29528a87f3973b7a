#!/usr/bin/env bash
# Seventh session, second device run: the convolution stack at batch 8 and 64 with the previous
# planner (engine-old: 4- or 16-sample tiles) against one-sample tiles (engine), alternating, at
# 1-16 threads. Results append to $OUT/dev2.jsonl.
set -u
cd "$(dirname "$0")"
mkdir -p "$OUT"
b() { # binary args...
  local bin=$1; shift
  timeout 60 ./$bin bench "$@" --seconds 0.6 --warmup 2 --json 2>>"$OUT/err2.txt" | sed "s/^{/{\"binary\": \"$bin\", /" >> "$OUT/dev2.jsonl"
}
for round in 1 2 3; do
  for t in 1 2 4 8 16; do
    for bin in engine-old engine; do b $bin --model convstack_s90.onnx --batch 8 --threads $t; done
  done
  for t in 2 16; do
    for bin in engine-old engine; do b $bin --model convstack_s90.onnx --batch 64 --threads $t; done
  done
  echo "round $round $(date +%T)"
done
