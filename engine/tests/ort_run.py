"""Runs an ONNX model in ONNX Runtime: ort_run.py MODEL.onnx INPUT.npy OUTPUT.npy [--literal]
(test helper). --literal turns graph optimisations off, so QuantizeLinear/DequantizeLinear run as
written instead of being fused into integer operators. A model with several inputs takes them
packed as the engine does (`graph::Ports`): INPUT.npy is `[batch, features]` float32 holding each
input's values in turn, cast here to the input's type; several outputs are written packed alike."""
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
inputs = sess.get_inputs()
if len(inputs) == 1:
    feed = {inputs[0].name: x}
else:
    types = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(float)": np.float32}
    feed, at = {}, 0
    for i in inputs:
        shape = [int(d) for d in i.shape[1:]]
        n = int(np.prod(shape))
        feed[i.name] = x[:, at:at + n].reshape(len(x), *shape).astype(types[i.type])
        at += n
outputs = sess.run(None, feed)
y = outputs[0] if len(outputs) == 1 else np.concatenate([o.reshape(len(o), -1) for o in outputs], axis=1)
np.save(out, y.astype(np.float32))
