"""Exports full-size torchvision models (random weights, seed 1; ResNet-50 magnitude-pruned to
90% per layer, first convolution dense; a MobileNetV2 with its 1x1 convolutions and classifier
pruned 90%) and a YOLOv5s (scripts/yolov5.py, 320x320, 80 classes,
convolutions 85% pruned but the first) with both of PyTorch's ONNX exporters, batch fixed at 1
as `torch.onnx.export` writes without dynamic axes, and with the legacy one at opset 13 too
(`NAME.opset13.onnx`: what DeepSparse, which reads opsets up to 19, was fed):
python export-torchvision.py OUT_DIR (models whose files are there already are skipped).
Inputs: OUT_DIR/input.npy (224x224), OUT_DIR/NAME.input.npy where a model takes another size.
Used by scripts/bench-torchvision; needs torch, torchvision, onnxscript and onnx."""
import os
import sys

import numpy as np
import torch
import torch.nn.utils.prune as prune
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from yolov5 import YOLOv5  # noqa: E402

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
torch.manual_seed(1)


def pruned(m, amount):
    layers = [x for x in m.modules() if isinstance(x, (torch.nn.Conv2d, torch.nn.Linear))][1:]
    for x in layers:
        prune.l1_unstructured(x, "weight", amount)
        prune.remove(x, "weight")
    return m


def pointwise_pruned(m, amount):
    """Magnitude-prunes the 1x1 convolutions and the classifier, per layer (depth-wise and the
    stem dense), as #19 asks of MobileNetV2."""
    for x in m.modules():
        if isinstance(x, torch.nn.Linear) or (isinstance(x, torch.nn.Conv2d) and x.kernel_size == (1, 1)):
            prune.l1_unstructured(x, "weight", amount)
            prune.remove(x, "weight")
    return m


models = {
    "resnet18": torchvision.models.resnet18(),
    "resnet50_s90": pruned(torchvision.models.resnet50(), 0.9),
    "mobilenet_v2": torchvision.models.mobilenet_v2(),
    "efficientnet_b0": torchvision.models.efficientnet_b0(),
    "squeezenet1_1": torchvision.models.squeezenet1_1(),
}
x = torch.rand(1, 3, 224, 224) * 2 - 1
np.save(os.path.join(out, "input.npy"), x.numpy())
torch.manual_seed(2)
models["yolov5s_s85"] = pruned(YOLOv5(width=0.50, depth=0.33, classes=80, image=320), 0.85)
torch.manual_seed(3)
models["mobilenet_v2_s90"] = pointwise_pruned(torchvision.models.mobilenet_v2(), 0.9)
inputs = {"yolov5s_s85": torch.rand(1, 3, 320, 320)}
np.save(os.path.join(out, "yolov5s_s85.input.npy"), inputs["yolov5s_s85"].numpy())
for name, m in models.items():
    if os.path.exists(os.path.join(out, f"{name}.dynamo.onnx")):
        continue
    sample = inputs.get(name, x)
    m.eval()
    torch.onnx.export(m, (sample,), os.path.join(out, f"{name}.legacy.onnx"), dynamo=False)
    torch.onnx.export(m, (sample,), os.path.join(out, f"{name}.opset13.onnx"), dynamo=False, opset_version=13)
    torch.onnx.export(m, (sample,), dynamo=True).save(os.path.join(out, f"{name}.dynamo.onnx"), external_data=True)
    print(name, "exported", flush=True)
