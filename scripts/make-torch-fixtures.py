"""Exports the PyTorch fixtures in engine/tests/torch/ with both of PyTorch's ONNX exporters, as a
user would: reduced-width versions of real architectures (a few MB each) with torchvision's
building blocks, in eval mode, random weights from a fixed seed.

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch torchvision onnxscript onnx transformers
    /tmp/torchvenv/bin/python scripts/make-torch-fixtures.py engine/tests/torch [NAME...]

(only the NAMEs given, where some are). 
Each model is written as NAME.legacy.onnx (torch.onnx.export(..., dynamo=False)) and
NAME.dynamo.onnx (the default exporter; its weights go to NAME.dynamo.onnx.data beside it), with
an input NAME.input.npy; the test runs ONNX Runtime on the same files, so no outputs are stored.
BERT's three int64 inputs are stored packed as the engine takes them (`graph::Ports`): one float32
`[batch, 3 * sequence]` array, token ids, attention mask, token types in turn.
"""
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.utils.prune as prune
from torchvision.models import mobilenet_v2
from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf
from torchvision.models.resnet import BasicBlock
from torchvision.models.squeezenet import Fire

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from yolov5 import YOLOv5  # noqa: E402

out_dir, only = sys.argv[1], set(sys.argv[2:])
os.makedirs(out_dir, exist_ok=True)
torch.manual_seed(0)


class SmallResNet18(nn.Module):
    """ResNet-18's layout (stem conv 7x7/2, max pool 3x3/2, four stages of two basic blocks with
    1x1 projection shortcuts, global average pooling, a linear classifier) at a quarter width."""

    def __init__(self, width=16, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, inplanes = [], width
        for i, planes in enumerate([width, 2 * width, 4 * width, 8 * width]):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or inplanes != planes:
                down = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
            layers.append(nn.Sequential(BasicBlock(inplanes, planes, stride, down), BasicBlock(planes, planes)))
            inplanes = planes
        self.layers = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(self.layers(x)), 1))


class CeilPoolNet(nn.Module):
    """SqueezeNet's pooling (max pool 3x3/2 with ceil_mode) and a classifier that averages."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True))
        self.classifier = nn.Sequential(nn.Conv2d(32, 10, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


class SmallSqueezeNet(nn.Module):
    """SqueezeNet 1.1's layout (Fire modules: a squeeze 1x1 convolution, then 1x1 and 3x3 expand
    convolutions joined by Concat; ceil-mode max pooling) at a quarter width."""

    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
                                      Fire(16, 4, 16, 16), Fire(32, 4, 16, 16), nn.MaxPool2d(3, 2, ceil_mode=True),
                                      Fire(32, 8, 32, 32), Fire(64, 8, 32, 32))
        self.classifier = nn.Sequential(nn.Conv2d(64, classes, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


def small_efficientnet():
    """EfficientNet-B0's blocks (MBConv: depth-wise convolutions, squeeze-and-excitation, SiLU)
    at a quarter width and depth."""
    setting, last = _efficientnet_conf("efficientnet_b0", width_mult=0.25, depth_mult=0.25)
    return EfficientNet(setting, dropout=0.2, num_classes=10, last_channel=last)


def randomize_batchnorm(model):
    """Untrained BatchNorm is the identity; give it statistics so that folding it matters."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


def pruned(model, amount):
    """Magnitude-prunes every convolution and linear layer but the first, per layer."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))][1:]
    for m in layers:
        prune.l1_unstructured(m, "weight", amount)
        prune.remove(m, "weight")
    return model


def small_yolov5():
    """YOLOv5's layout (scripts/yolov5.py: SiLU convolutions, C3 blocks, SPPF, nearest upsampling,
    the Detect head's reshape, permute, split and box decoding) at a quarter of YOLOv5s's width,
    3 classes, 64x64 images; its convolutions 85% pruned but the first. Built from its own seed."""
    with torch.random.fork_rng():
        torch.manual_seed(5)
        return pruned(YOLOv5(width=0.125, depth=0.33, classes=3, image=64), 0.85)


class Bert(nn.Module):
    """`transformers`' BertModel (its real modules and attention-mask code) at a reduced size:
    2 layers, hidden 64, 4 heads, sequence 16; every weight, bias and norm parameter random.
    Returns both outputs, the last hidden state and the pooled output."""

    def __init__(self):
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=128, max_position_embeddings=64)
        with torch.random.fork_rng():
            torch.manual_seed(11)
            self.bert = BertModel(config)
            with torch.no_grad():
                for p in self.bert.parameters():
                    p.add_(torch.randn_like(p) * 0.05)

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.last_hidden_state, out.pooler_output


def export_bert(name="bert_l2_h64"):
    model = Bert().eval()
    g = torch.Generator().manual_seed(12)
    ids = torch.randint(0, 500, (2, 16), generator=g)
    mask = torch.ones(2, 16, dtype=torch.int64)
    mask[0, 11:] = 0
    types = torch.randint(0, 2, (2, 16), generator=g)
    packed = torch.cat([ids, mask, types], dim=1).numpy().astype(np.float32)
    np.save(os.path.join(out_dir, f"{name}.input.npy"), packed)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    args = (ids[:1], mask[:1], types[:1])
    torch.onnx.export(model, args, os.path.join(out_dir, f"{name}.legacy.onnx"), dynamo=False, input_names=names,
                      output_names=["last_hidden_state", "pooler_output"], dynamic_axes={n: {0: "batch"} for n in names},
                      opset_version=17)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(model, args, dynamo=True, input_names=names,
                                dynamic_shapes={n: {0: batch} for n in names})
    program.save(os.path.join(out_dir, f"{name}.dynamo.onnx"), external_data=True)
    print(name, "written")


if not only or "bert_l2_h64" in only:
    export_bert()

models = {
    "resnet18_w16": (SmallResNet18(), (1, 3, 64, 64)),
    "resnet18_w16_s90": (pruned(SmallResNet18(), 0.9), (1, 3, 64, 64)),
    "ceilpool": (CeilPoolNet(), (1, 3, 45, 45)),
    "mobilenet_v2_w25": (mobilenet_v2(width_mult=0.25, num_classes=10), (1, 3, 64, 64)),
    "squeezenet_w25": (SmallSqueezeNet(), (1, 3, 64, 64)),
    "efficientnet_w25": (small_efficientnet(), (1, 3, 64, 64)),
    "yolov5_w12_s85": (small_yolov5(), (1, 3, 64, 64)),
}
for name, (model, shape) in models.items():
    if only and name not in only:
        continue
    randomize_batchnorm(model)
    model.eval()
    x = torch.rand(*shape) * 2 - 1
    np.save(os.path.join(out_dir, f"{name}.input.npy"), np.concatenate([x.numpy()] * 2))
    legacy = os.path.join(out_dir, f"{name}.legacy.onnx")
    torch.onnx.export(model, (x,), legacy, dynamo=False, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    dynamo = os.path.join(out_dir, f"{name}.dynamo.onnx")
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(model, (x,), dynamic_shapes={"x": {0: batch}}, dynamo=True)
    program.save(dynamo, external_data=True)
    print(name, "written")
