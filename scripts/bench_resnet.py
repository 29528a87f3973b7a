"""Times #18's ResNet-50 files (scripts/make-resnet50.py) in ONNX Runtime, DeepSparse and the
engine, in rounds that alternate the three on each file: one ONNX Runtime session and one
DeepSparse engine per file, batch size and thread count, compiled once; the engine's `bench
--json` (which compiles the file itself) run as a command in each round.
python bench_resnet.py DIR ENGINE ROUNDS THREADS MODEL... > rows.jsonl
Prints one JSON line per measurement (runtime, model, batch, threads, round, median_ms). Run with
the peers' Python (../shared/peers/setup.sh); used by scripts/bench-resnet."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort

folder, engine, rounds, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
models = sys.argv[5:]
batches = (1, 16)
inputs = {b: np.load(os.path.join(folder, f"input_b{b}.npy")) for b in batches}
# Runs per timing: about half a second of work at batch 1, and five runs at batch 16.
iters = {1: 20, 16: 5}


def median_ms(run, n):
    run()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def emit(**row):
    print(json.dumps(row), flush=True)


peers = {}
for model in models:
    path = os.path.join(folder, f"{model}.onnx")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    for b in batches:
        peers[model, b, "onnxruntime"] = lambda s=session, x=inputs[b]: s.run(None, {"input": x})
    try:
        from deepsparse import compile_model

        for b in batches:
            compiled = compile_model(path, batch_size=b, num_cores=threads)
            peers[model, b, "deepsparse"] = lambda e=compiled, x=inputs[b]: e.run([x])
    except Exception as e:  # noqa: BLE001
        emit(runtime="deepsparse", model=model, error=str(e).splitlines()[0][:200])

for r in range(rounds):
    for model in models:
        for b in batches:
            for runtime in ("onnxruntime", "deepsparse"):
                if (model, b, runtime) in peers:
                    ms = median_ms(peers[model, b, runtime], iters[b])
                    emit(runtime=runtime, model=model, batch=b, threads=threads, round=r, median_ms=ms)
        command = [engine, "bench", "--model", os.path.join(folder, f"{model}.onnx"), "--batch", "1,16",
                   "--threads", str(threads), "--seconds", "2", "--warmup", "2", "--json"]
        for line in subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines():
            row = json.loads(line)
            emit(runtime="engine", model=model, batch=row["batch"], threads=threads, round=r, median_ms=row["median_ms"])
