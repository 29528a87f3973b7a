#!/usr/bin/env python3
"""Writes the depth-wise benchmark models as ONNX (weights as dense initializers with zeros):

  stack8x256_s90.onnx   input 256 -> 8 x (Gemm 256x256 + Relu), 90% of each weight zero
                        (random unstructured, smallest magnitudes pruned), as in issue #6.

Usage: python make-stack-model.py OUT_DIR   (needs numpy and onnx)
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def stack(path, layers=8, width=256, sparsity=0.9, seed=6):
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev = "input"
    for i in range(layers):
        w = rng.standard_normal((width, width)).astype(np.float32) / np.sqrt(width)
        cut = np.quantile(np.abs(w), sparsity)
        w[np.abs(w) < cut] = 0.0
        b = (rng.standard_normal(width) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"fc{i}.weight"), numpy_helper.from_array(b, f"fc{i}.bias")]
        nodes.append(helper.make_node("Gemm", [prev, f"fc{i}.weight", f"fc{i}.bias"], [f"fc{i}.pre"], name=f"fc{i}", transB=1))
        nodes.append(helper.make_node("Relu", [f"fc{i}.pre"], [f"fc{i}"], name=f"fc{i}.relu"))
        prev = f"fc{i}"
    graph = helper.make_graph(
        nodes,
        "stack",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["N", width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "target/bench-models"
    os.makedirs(out, exist_ok=True)
    stack(os.path.join(out, "stack8x256_s90.onnx"))
    print(os.path.join(out, "stack8x256_s90.onnx"))
