"""Runs an ONNX model in ONNX Runtime: ort_run.py MODEL.onnx INPUT.npy OUTPUT.npy [--literal]
(test helper). --literal turns graph optimisations off, so QuantizeLinear/DequantizeLinear run as
written instead of being fused into integer operators."""
import sys

import numpy as np
import onnxruntime as ort

model, inp, out = sys.argv[1:4]
so = ort.SessionOptions()
so.intra_op_num_threads = 1
if "--literal" in sys.argv[4:]:
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
x = np.load(inp)
np.save(out, sess.run(None, {sess.get_inputs()[0].name: x})[0].astype(np.float32))
