"""Writes small ONNX models of the layout operators and shape arithmetic that real exports use, for
the engine to match ONNX Runtime on (test helper): onnx_operators.py OUT_DIR writes NAME.onnx and
NAME.input.npy per model. Each model has a dynamic batch (inputs of 3 samples) and exercises one
operator with the attribute values ONNX defines: nearest Resize under every coordinate
transformation and rounding mode, up and down, by scales and by sizes; Upsample; Slice with
negative starts and steps and clamped ends; Split by sizes and into equal parts; Transpose,
Reshape with 0 and -1, Squeeze, Unsqueeze; Gather of an activation with scalar, list and 2-D
indices; and the `Shape -> Gather -> Unsqueeze -> Concat -> Reshape` chain with a product of
dimensions that PyTorch's legacy exporter writes for a dynamic batch."""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(7)


def ints(name, values):
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def floats(name, values):
    return numpy_helper.from_array(np.array(values, dtype=np.float32), name)


def save(name, nodes, shape, inits=(), opset=18):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [])
    graph = helper.make_graph(nodes, name, [x], [y], list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    model.graph.output[0].type.tensor_type.ClearField("shape")
    onnx.save(model, os.path.join(out, f"{name}.onnx"))
    np.save(os.path.join(out, f"{name}.input.npy"), rng.uniform(-1, 1, (3, *shape)).astype(np.float32))


# Nearest Resize: every coordinate transformation and rounding mode, by scales and by sizes.
transforms = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn"]
roundings = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
for t in transforms:
    for r in roundings:
        attrs = dict(mode="nearest", coordinate_transformation_mode=t, nearest_mode=r)
        save(f"resize_{t}_{r}_scales", [helper.make_node("Resize", ["x", "", "scales"], ["y"], **attrs)], [2, 5, 7],
             [floats("scales", [1, 1, 1.5, 0.6])], opset=19)
    save(f"resize_{t}_sizes", [helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest", coordinate_transformation_mode=t)],
         [2, 5, 7], [ints("sizes", [3, 2, 11, 3])], opset=19)
save("resize_yolo_2x", [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest", coordinate_transformation_mode="asymmetric",
                                         nearest_mode="floor")], [3, 4, 4], [floats("scales", [1, 1, 2, 2])], opset=13)
save("upsample_opset9", [helper.make_node("Upsample", ["x", "scales"], ["y"], mode="nearest")], [2, 3, 4],
     [floats("scales", [1, 1, 2, 3])], opset=9)

# Slice: negative starts and steps, ends past the end, axes counted from the end; opset 9 attributes.
save("slice_steps", [helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["y"])], [4, 6, 5],
     [ints("starts", [-1, 1, 0]), ints("ends", [-100, 100, 2**63 - 1]), ints("axes", [1, -1, 0]), ints("steps", [-2, 2, 1])])
save("slice_opset9", [helper.make_node("Slice", ["x"], ["y"], starts=[1, 0], ends=[3, -1], axes=[1, 2])], [4, 6], opset=9)

# Split by sizes (joined again in another order) and into uneven equal parts (opset 18).
save("split_sizes", [helper.make_node("Split", ["x", "sizes"], ["a", "b", "c"], axis=-1),
                     helper.make_node("Concat", ["c", "a", "b"], ["y"], axis=2)], [3, 8], [ints("sizes", [2, 2, 4])])
save("split_equal", [helper.make_node("Split", ["x"], ["a", "b", "c"], axis=1, num_outputs=3),
                     helper.make_node("Concat", ["b", "c", "a"], ["y"], axis=1)], [7, 2])

# Transpose, Reshape with 0 and -1, Squeeze and Unsqueeze, as a detection head's view and permute.
save("transpose_reshape", [
    helper.make_node("Reshape", ["x", "view"], ["v"]),
    helper.make_node("Transpose", ["v"], ["t"], perm=[0, 1, 3, 4, 2]),
    helper.make_node("Unsqueeze", ["t", "axis"], ["u"]),
    helper.make_node("Squeeze", ["u", "axis"], ["s"]),
    helper.make_node("Reshape", ["s", "flat"], ["y"]),
], [12, 3, 2], [ints("view", [0, 3, 4, 3, -1]), ints("axis", [2]), ints("flat", [-1, 18, 4])])

# Gather of an activation: a scalar index drops the axis, a list keeps it, 2-D indices add one.
save("gather_scalar", [helper.make_node("Gather", ["x", "i"], ["y"], axis=1)], [4, 5], [ints("i", -1)])
save("gather_list", [helper.make_node("Gather", ["x", "i"], ["y"], axis=2)], [4, 5], [ints("i", [4, 0, 0, 2])])
save("gather_2d", [helper.make_node("Gather", ["x", "i"], ["y"], axis=-1)], [3, 5], [ints("i", [[0, 1], [4, 3]])])

# The legacy exporter's reshape for a dynamic batch: view(batch, 3, C // 3 * H, W) from Shape.
chain = [
    helper.make_node("Shape", ["x"], ["shape"]),
    helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
    helper.make_node("Gather", ["shape", "two"], ["h"], axis=0),
    helper.make_node("Shape", ["x"], ["tail"], start=-1),
    helper.make_node("Mul", ["h", "c3"], ["ch"]),
    helper.make_node("Unsqueeze", ["batch", "axis0"], ["b1"]),
    helper.make_node("Unsqueeze", ["ch", "axis0"], ["ch1"]),
    helper.make_node("Concat", ["b1", "three", "ch1", "tail"], ["target"], axis=0),
    helper.make_node("Cast", ["target"], ["target64"], to=TensorProto.INT64),
    helper.make_node("Reshape", ["x", "target64"], ["r"]),
    helper.make_node("Relu", ["r"], ["y"]),
]
save("shape_chain", chain, [6, 4, 5], [ints("zero", 0), ints("two", 2), ints("c3", 2), ints("axis0", [0]), ints("three", [3])])

# Sequence operators (BERT's), named seq_*: computed in floating point, so matched at 1e-5, not
# bit for bit. Softmax and LayerNormalization over the last axis; MatMul by weights on
# [rows, features] values; MatMul of two values with leading axes broadcast; Where with a
# constant and an activation; comparisons and logic on 0/1 values; Expand. (GatherND, whose
# indices name the batch, is checked on the BERT fixtures of make-torch-fixtures.py.)
save("seq_softmax_last_axis", [helper.make_node("Softmax", ["x"], ["y"], axis=-1)], [3, 4, 7])
save("seq_layer_norm", [helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["y"], axis=-1, epsilon=1e-5)], [5, 8],
     [floats("scale", rng.uniform(0.5, 1.5, 8)), floats("bias", rng.uniform(-1, 1, 8))], opset=17)
# The layer norm that PyTorch's exporter writes below opset 17, nine nodes the importer fuses into
# one: with Pow, constants in Constant nodes, a scale and a bias (opset 13, axes as attribute);
# and with Mul of the difference by itself, no scale or bias (opset 18, axes as input).
save("seq_layer_norm_decomposed", [
    helper.make_node("ReduceMean", ["x"], ["mean"], axes=[-1]),
    helper.make_node("Sub", ["x", "mean"], ["d"]),
    helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(np.array(2.0, dtype=np.float32))),
    helper.make_node("Pow", ["d", "two"], ["sq"]),
    helper.make_node("ReduceMean", ["sq"], ["var"], axes=[-1]),
    helper.make_node("Constant", [], ["eps"], value=numpy_helper.from_array(np.array(1e-12, dtype=np.float32))),
    helper.make_node("Add", ["var", "eps"], ["ve"]),
    helper.make_node("Sqrt", ["ve"], ["dev"]),
    helper.make_node("Div", ["d", "dev"], ["n"]),
    helper.make_node("Mul", ["n", "scale"], ["s"]),
    helper.make_node("Add", ["s", "bias"], ["y"]),
], [5, 8], [floats("scale", rng.uniform(0.5, 1.5, 8)), floats("bias", rng.uniform(-1, 1, 8))], opset=13)
save("seq_layer_norm_decomposed_plain", [
    helper.make_node("ReduceMean", ["x", "last"], ["mean"]),
    helper.make_node("Sub", ["x", "mean"], ["d"]),
    helper.make_node("Mul", ["d", "d"], ["sq"]),
    helper.make_node("ReduceMean", ["sq", "last"], ["var"]),
    helper.make_node("Add", ["eps", "var"], ["ve"]),
    helper.make_node("Sqrt", ["ve"], ["dev"]),
    helper.make_node("Div", ["d", "dev"], ["y"]),
], [2, 3, 6], [ints("last", [-1]), floats("eps", 1e-5)])
save("seq_rows_by_weights", [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])], [2, 6, 8],
     [floats("w", rng.uniform(-1, 1, (8, 5))), floats("b", rng.uniform(-1, 1, 5))])
save("seq_products", [
    helper.make_node("Transpose", ["x"], ["t"], perm=[0, 1, 3, 2]),
    helper.make_node("MatMul", ["x", "t"], ["s"]),
    helper.make_node("Slice", ["x", "z", "one", "ax"], ["first"]),
    helper.make_node("MatMul", ["s", "first"], ["y"]),
], [3, 4, 5], [ints("z", [0]), ints("one", [1]), ints("ax", [1])])
save("seq_where_mask", [
    helper.make_node("Greater", ["x", "zero"], ["positive"]),
    helper.make_node("Not", ["positive"], ["negative"]),
    helper.make_node("And", ["negative", "keep"], ["hide"]),
    helper.make_node("Where", ["hide", "low", "x"], ["masked"]),
    helper.make_node("Softmax", ["masked"], ["y"], axis=-1),
], [2, 3, 6], [floats("zero", 0.0), numpy_helper.from_array(np.array([True, False, True, True, False, True]), "keep"),
               floats("low", -3.4028235e38)])
save("seq_expand_equal", [
    helper.make_node("Expand", ["x", "shape"], ["e"]),
    helper.make_node("Equal", ["e", "half"], ["eq"]),
    helper.make_node("Cast", ["eq"], ["f"], to=TensorProto.FLOAT),
    helper.make_node("Add", ["e", "f"], ["y"]),
], [1, 5], [ints("shape", [1, 3, 5]), floats("half", 0.5)])
