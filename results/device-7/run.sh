#!/usr/bin/env bash
# Seventh session's device run: int8 (AMX tiles / sparse VNNI) against fp32 at batch 64 pinned to
# one and two cores, then depth-wise against layer-wise for the 8x256 stack at 4096 on 1-16
# threads, then the convolution stack at batch 8. Results append to $OUT/dev.jsonl as they come.
set -u
cd "$(dirname "$0")"
E=./engine
mkdir -p "$OUT"
{ lscpu; nproc; grep -o 'amx[a-z0-9_]*' /proc/cpuinfo | sort -u; } > "$OUT/lscpu.txt" 2>&1
b() { # cpus requested-kernels args...
  local cpus=$1 k=$2; shift 2
  timeout 40 taskset -c "$cpus" $E bench "$@" --kernels "$k" --seconds 0.5 --warmup 20 --json 2>>"$OUT/err.txt" |
    sed "s/^{/{\"cpus\": \"$cpus\", \"req_kernels\": \"$k\", /" >> "$OUT/dev.jsonl"
}
$E info --model gmp90-qat.sparse --batch 64 --threads 2 > "$OUT/info-gmp90-qat.txt" 2>&1
for round in 1 2 3 4 5; do
  for spec in "gmp90 auto" "gmp90-qat auto" "gmp90-qat sparse" "gmp90-block4 auto" "gmp90-block4-qat auto" "gmp90-block4-qat sparse" "lenet5-gmp90 auto" "lenet5-gmp90-qat auto"; do
    set -- $spec
    b "${ONE:-2}" "$2" --model "$1.sparse" --batch 64 --threads 1
    b "${TWO:-2,3}" "$2" --model "$1.sparse" --batch 64 --threads 2
  done
  echo "int8 round $round $(date +%T)"
done
for round in 1 2 3; do
  for t in 1 2 4 8 16; do
    for s in layerwise depthwise; do b 0-15 auto --model stack8x256_s90.onnx --batch 4096 --threads $t --schedule $s; done
  done
  echo "stack round $round $(date +%T)"
done
for round in 1 2; do
  for t in 1 2 16; do
    for s in layerwise depthwise; do b 0-15 auto --model convstack_s90.onnx --batch 8 --threads $t --schedule $s; done
  done
  echo "conv round $round $(date +%T)"
done
