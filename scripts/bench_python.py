"""Times one model file at batch 1 through sparsify_engine's Python calls, the engine's own
loop (Engine.benchmark, what `engine bench` measures), DeepSparse's Python API and ONNX
Runtime's, in ROUNDS alternating rounds in one process; prints one JSON line per round and
caller with its median ms per call (and the engine's loop timed right after it, `loop_ms`).
Usage: bench_python.py MODEL.onnx THREADS ROUNDS SECONDS"""

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


# Each call is timed on its own, as written, with nothing but the clock around it (timeit's
# approach: the statement is compiled into the timing loop, so no lambda frame is counted).
TIMING_LOOP = """
def timed_calls(clock, n):
    times = []
    for _ in range(n):
        t = clock()
        {call}
        times.append(clock() - t)
    return times
"""


def timing(call):
    """`call` (a statement) compiled into the timing loop: `timed_calls(clock, n)`."""
    scope = dict(globals())
    exec(TIMING_LOOP.format(call=call), scope)
    return scope["timed_calls"]


def per_call(timed_calls):
    """Median seconds of one call, each call timed on its own (the statistic `engine bench`
    reports: the median of single runs), over at least `seconds` after 50 warm-up calls."""
    timed_calls(time.perf_counter, 50)
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 100:
        times += timed_calls(time.perf_counter, 100)
    return float(np.median(times))


def engine_loop():
    """The engine's own loop, no Python between runs (what `engine bench` reports): median ms."""
    return engine.benchmark(1, seconds=seconds, warmup=50)["median_ms"]


statements = {
    "sparsify_engine run([x])": "engine.run([x])",
    "sparsify_engine run(None, {name: x})": "engine.run(None, {name: x})",
    "onnxruntime run(None, {name: x})": "session.run(None, {name: x})",
}
if ds is not None:
    statements["deepsparse run([x])"] = "ds.run([x])"
callers = {caller: timing(statement) for caller, statement in statements.items()}
for r in range(rounds):
    order = list(callers) if r % 2 == 0 else list(reversed(callers))
    for caller in order:
        # Each caller right next to the engine's loop: the machine's slow phases, seconds long,
        # mostly move both alike (`loop_ms`, for ratios paired in time).
        ms, loop_ms = 1e3 * per_call(callers[caller]), engine_loop()
        print(json.dumps({"round": r, "caller": caller, "ms": ms, "loop_ms": loop_ms}), flush=True)
    print(json.dumps({"round": r, "caller": "engine loop (Engine.benchmark)", "ms": engine_loop()}), flush=True)
