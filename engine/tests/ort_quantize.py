"""Quantizes an fp32 ONNX model with ONNX Runtime's own quantizer, as a user would (test helper):
ort_quantize.py IN.onnx OUT.onnx FORMAT PER_CHANNEL [SEED]
FORMAT is qdq or qoperator (static, calibrated on 16 seeded random samples in [-1, 1]), or
dynamic; PER_CHANNEL is 0 or 1."""
import sys

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                      quantize_static)

src, dst, fmt, per_channel = sys.argv[1:5]
seed = int(sys.argv[5]) if len(sys.argv) > 5 else 0
per_channel = per_channel == "1"
model = onnx.load(src)
inp = model.graph.input[0]
shape = [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]]
batch = inp.type.tensor_type.shape.dim[0].dim_value or 4  # a file with a fixed batch gets that


class Reader(CalibrationDataReader):
    def __init__(self):
        rng = np.random.default_rng(seed)
        self.batches = iter([{inp.name: rng.uniform(-1, 1, [batch] + shape).astype(np.float32)} for _ in range(4)])

    def get_next(self):
        return next(self.batches, None)


if fmt == "dynamic":
    quantize_dynamic(src, dst, per_channel=per_channel, weight_type=QuantType.QInt8)
else:
    quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                    per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
