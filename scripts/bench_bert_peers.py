"""Times a BERT ONNX file (inputs input_ids, attention_mask, token_type_ids, int64) in ONNX
Runtime and DeepSparse at batch 1, 2 threads: bench_bert_peers.py MODEL.onnx ITERS. Prints one
JSON line per runtime with its median ms (DeepSparse's line says why where it cannot compile the
file). Run with the peers' Python (../shared/peers/setup.sh); used by scripts/bench-bert."""
import json
import sys
import time

import numpy as np

model, iters = sys.argv[1], int(sys.argv[2])
ids = (np.arange(128, dtype=np.int64) * 7919 + 13) % 30522
mask = np.ones(128, dtype=np.int64)
types = np.zeros(128, dtype=np.int64)
feed = [ids[None], mask[None], types[None]]


def median_ms(run):
    for _ in range(3):
        run()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


import onnxruntime as ort  # noqa: E402

so = ort.SessionOptions()
so.intra_op_num_threads = 2
sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
names = [i.name for i in sess.get_inputs()]
print(json.dumps({"runtime": "onnxruntime", "median_ms": median_ms(lambda: sess.run(None, dict(zip(names, feed))))}), flush=True)
try:
    from deepsparse import compile_model

    engine = compile_model(model, batch_size=1, num_cores=2)
    print(json.dumps({"runtime": "deepsparse", "median_ms": median_ms(lambda: engine.run(feed))}), flush=True)
except Exception as e:  # noqa: BLE001
    print(json.dumps({"runtime": "deepsparse", "median_ms": None, "error": str(e).splitlines()[0][:200]}), flush=True)
