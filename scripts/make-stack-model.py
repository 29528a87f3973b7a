#!/usr/bin/env python3
"""Writes the depth-wise benchmark models as ONNX (weights as dense initializers with zeros):

  stack8x256_s90.onnx   input 256 -> 8 x (Gemm 256x256 + Relu), 90% of each weight zero
                        (random unstructured, smallest magnitudes pruned), as in issue #6.
  convstack_s90.onnx    3 x 96 x 96 image -> Conv 3->32 3x3 (dense) + Relu, then 4 x (Conv
                        32->32 3x3 + Relu) at 90% sparsity, MaxPool 2x2: images too large for
                        one core's L2, the case for row bands.
  convstack_4x1_s90.onnx  the same, its sparse convolutions pruned in blocks of 4 output
                        channels sharing each input tap (sparsify's mask = "4x1"), smallest
                        mean magnitudes first.

Usage: python make-stack-model.py OUT_DIR   (needs numpy and onnx)
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def prune(w, sparsity):
    cut = np.quantile(np.abs(w), sparsity)
    w[np.abs(w) < cut] = 0.0
    return w


def prune_4x1(w, sparsity):
    """Prunes whole blocks of 4 consecutive output channels at one (input channel, ky, kx)."""
    out = w.shape[0]
    blocks = np.abs(w).reshape(out // 4, 4, -1).mean(axis=1)
    cut = np.quantile(blocks, sparsity)
    keep = np.repeat(blocks >= cut, 4, axis=0).reshape(w.shape)
    return np.where(keep, w, 0.0).astype(np.float32)


def save(path, nodes, inits, inputs, outputs):
    graph = helper.make_graph(nodes, "bench", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


def conv_stack(path, size=96, channels=32, layers=4, sparsity=0.9, seed=7, blocks=False):
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev, cin = "input", 3
    for i in range(layers + 1):
        w = rng.standard_normal((channels, cin, 3, 3)).astype(np.float32) / np.sqrt(cin * 9)
        if i > 0:
            w = prune_4x1(w, sparsity) if blocks else prune(w, sparsity)
        b = (rng.standard_normal(channels) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"conv{i}.weight"), numpy_helper.from_array(b, f"conv{i}.bias")]
        nodes.append(helper.make_node("Conv", [prev, f"conv{i}.weight", f"conv{i}.bias"], [f"conv{i}.pre"], name=f"conv{i}",
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"conv{i}.pre"], [f"conv{i}"], name=f"conv{i}.relu"))
        prev, cin = f"conv{i}", channels
    nodes.append(helper.make_node("MaxPool", [prev], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]))
    save(path, nodes, inits, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
         [helper.make_tensor_value_info("pool", TensorProto.FLOAT, ["N", channels, size // 2, size // 2])])


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
    conv_stack(os.path.join(out, "convstack_s90.onnx"))
    conv_stack(os.path.join(out, "convstack_4x1_s90.onnx"), blocks=True)
    print(os.path.join(out, "stack8x256_s90.onnx"))
    print(os.path.join(out, "convstack_s90.onnx"))
    print(os.path.join(out, "convstack_4x1_s90.onnx"))
