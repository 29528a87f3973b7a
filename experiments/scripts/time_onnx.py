"""Median latency of an ONNX model in ONNX Runtime and, when installed, DeepSparse.

Usage: time_onnx.py MODEL.onnx --batch 64 --threads 2   ->  {"onnxruntime_ms": .., "deepsparse_ms": ..}
"""
import argparse
import json
import time

import numpy as np


def median_ms(fn, iters=50, warmup=10):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e3)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal([a.batch] + list(inp.shape[1:])).astype(np.float32)
    out = {"onnxruntime_ms": median_ms(lambda: sess.run(None, {inp.name: x}))}
    try:
        from deepsparse import compile_model
        eng = compile_model(a.model, batch_size=a.batch, num_cores=a.threads)
        out["deepsparse_ms"] = median_ms(lambda: eng.run([x]))
    except ImportError:
        out["deepsparse_ms"] = None
    print(json.dumps(out))


if __name__ == "__main__":
    main()
