"""Writes #18's ResNet-50 workload: torchvision's ResNet-50 v1.5 (random weights, seeded), exported
by PyTorch's legacy exporter at opset 13 (BatchNormalization folded into the convolutions, as it
writes them; DeepSparse reads opsets up to 19) with a dynamic batch, in five files:
  resnet50_dense.onnx      no pruning
  resnet50_s90.onnx        every convolution but the first, and the classifier, magnitude-pruned
  resnet50_s95.onnx        to 90% / 95% per layer, unstructured
  resnet50_4x1_s90.onnx    the same layers to 90% in blocks of 4 output channels at one input
                           position (the blocks of least L1 norm go)
  resnet50_s95_int8.onnx   the 95% file quantized by ONNX Runtime's own quantizer (QDQ, int8
                           per-channel weights, uint8 activations, 4 seeded calibration batches):
                           the pruned95_quant analogue
and seeded inputs input_b1.npy and input_b16.npy (uniform in [-1, 1]).
python make-resnet50.py OUT_DIR [SEED]; needs torch, torchvision, onnx and onnxruntime."""
import os
import sys

import numpy as np
import torch
import torchvision
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

out = sys.argv[1]
seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
os.makedirs(out, exist_ok=True)


def prunable(m):
    """Every convolution but the stem, and the classifier."""
    return [x for x in m.modules() if isinstance(x, (torch.nn.Conv2d, torch.nn.Linear))][1:]


def prune_unstructured(m, sparsity):
    with torch.no_grad():
        for layer in prunable(m):
            w = layer.weight
            k = int(round(w.numel() * sparsity))
            cut = w.abs().flatten().kthvalue(k).values
            w.mul_((w.abs() > cut).float())
    return m


def prune_blocks_4x1(m, sparsity):
    """Blocks of 4 consecutive output channels at one input position (channel, tap)."""
    with torch.no_grad():
        for layer in prunable(m):
            w = layer.weight
            rows = w.reshape(w.shape[0], -1)
            blocks = rows.reshape(rows.shape[0] // 4, 4, rows.shape[1]).abs().sum(1)
            k = int(round(blocks.numel() * sparsity))
            cut = blocks.flatten().kthvalue(k).values
            keep = (blocks > cut).float().repeat_interleave(4, 0)
            w.mul_(keep.reshape(w.shape))
    return m


def fresh():
    torch.manual_seed(seed)
    m = torchvision.models.resnet50()
    # Running statistics as a trained network has them, so the folded convolutions differ from
    # their unfolded weights (torchvision's initial statistics are 0 and 1).
    g = torch.Generator().manual_seed(seed + 1)
    for bn in (x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)):
        n = bn.num_features
        bn.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
        bn.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
        bn.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
        bn.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return m.eval()


def export(m, name):
    path = os.path.join(out, f"{name}.onnx")
    torch.onnx.export(m, (torch.zeros(1, 3, 224, 224),), path, dynamo=False, opset_version=13,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    print(name, "written", flush=True)
    return path


rng = np.random.default_rng(seed)
for batch in (1, 16):
    np.save(os.path.join(out, f"input_b{batch}.npy"), rng.uniform(-1, 1, (batch, 3, 224, 224)).astype(np.float32))
export(fresh(), "resnet50_dense")
export(prune_unstructured(fresh(), 0.90), "resnet50_s90")
s95 = export(prune_unstructured(fresh(), 0.95), "resnet50_s95")
export(prune_blocks_4x1(fresh(), 0.90), "resnet50_4x1_s90")


class Calibration(CalibrationDataReader):
    def __init__(self):
        r = np.random.default_rng(seed + 2)
        self.batches = iter([{"input": r.uniform(-1, 1, (4, 3, 224, 224)).astype(np.float32)} for _ in range(4)])

    def get_next(self):
        return next(self.batches, None)


quantize_static(s95, os.path.join(out, "resnet50_s95_int8.onnx"), Calibration(), quant_format=QuantFormat.QDQ,
                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
print("resnet50_s95_int8 written", flush=True)
