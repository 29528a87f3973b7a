"""Times one model file at batch 1 through sparsify_engine's Python calls, the engine's own
loop (Engine.benchmark, what `engine bench` measures), DeepSparse's Python API and ONNX
Runtime's, in ROUNDS alternating rounds in one process; prints one JSON line per round and
caller with its median ms per call. Usage: bench_python.py MODEL.onnx THREADS ROUNDS SECONDS"""

import json
import sys
import time

import numpy as np
import onnxruntime as ort

import sparsify_engine as se

path, threads, rounds, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
x = np.random.default_rng(0).standard_normal((1, *session.get_inputs()[0].shape[1:])).astype(np.float32)
options = ort.SessionOptions()
options.intra_op_num_threads = threads
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
engine = se.compile_model(path, batch_size=1, num_cores=threads)
try:
    import deepsparse

    ds = deepsparse.compile_model(path, batch_size=1, num_cores=threads)
except ImportError:
    ds = None


def per_call(call):
    """Median seconds of one call, over at least `seconds` of calls in blocks of 100."""
    for _ in range(50):
        call()
    blocks, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(blocks) < 5:
        t = time.perf_counter()
        for _ in range(100):
            call()
        blocks.append((time.perf_counter() - t) / 100)
    return float(np.median(blocks))


callers = {
    "sparsify_engine run([x])": lambda: engine.run([x]),
    "sparsify_engine run(None, {name: x})": lambda: engine.run(None, {name: x}),
    "onnxruntime run(None, {name: x})": lambda: session.run(None, {name: x}),
}
if ds is not None:
    callers["deepsparse run([x])"] = lambda: ds.run([x])
for r in range(rounds):
    order = list(callers) if r % 2 == 0 else list(reversed(callers))
    for caller in order:
        print(json.dumps({"round": r, "caller": caller, "ms": 1e3 * per_call(callers[caller])}), flush=True)
    # The engine's own loop, no Python between runs: what `engine bench` reports.
    row = engine.benchmark(1, seconds=seconds, warmup=50)
    print(json.dumps({"round": r, "caller": "engine loop (Engine.benchmark)", "ms": row["median_ms"]}), flush=True)
