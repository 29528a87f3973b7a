"""YOLOv5 (v6.0 layout, ultralytics/yolov5's models/yolov5s.yaml) in plain PyTorch, for exports:
Conv = Conv2d + BatchNorm + SiLU; C3 blocks (two 1x1 branches joined by Concat, bottlenecks with
residual adds in the backbone); SPPF (three chained 5x5 max pools joined by Concat); a PANet neck
with nearest 2x upsampling; a Detect head that decodes boxes as the exported model does (sigmoid,
grid offsets, anchor sizes; one [batch, boxes, 5 + classes] output). `width` and `depth` scale the
channels and block counts as the yaml's multipliers do (YOLOv5s: 0.50 and 0.33)."""
import math

import torch
import torch.nn as nn


class Conv(nn.Module):
    def __init__(self, c1, c2, k=1, s=1, p=None):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2 if p is None else p, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c, shortcut=True):
        super().__init__()
        self.cv1, self.cv2 = Conv(c, c, 1), Conv(c, c, 3)
        self.add = shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    def __init__(self, c1, c2, n=1, shortcut=True):
        super().__init__()
        c = c2 // 2
        self.cv1, self.cv2, self.cv3 = Conv(c1, c, 1), Conv(c1, c, 1), Conv(2 * c, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c, shortcut) for _ in range(n)))

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    def __init__(self, c1, c2, k=5):
        super().__init__()
        c = c1 // 2
        self.cv1, self.cv2 = Conv(c1, c, 1), Conv(4 * c, c2, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


ANCHORS = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]
STRIDES = [8, 16, 32]


class Detect(nn.Module):
    def __init__(self, channels, classes, image):
        super().__init__()
        self.no, self.na = classes + 5, 3
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in channels)
        self.grids, self.anchor_grids = [], []
        for anchors, stride in zip(ANCHORS, STRIDES):
            n = image // stride
            y, x = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
            grid = torch.stack((x, y), 2).expand(1, self.na, n, n, 2).float() - 0.5
            sizes = torch.tensor(anchors, dtype=torch.float32).view(1, self.na, 1, 1, 2)
            self.grids.append(grid)
            self.anchor_grids.append(sizes.expand(1, self.na, n, n, 2).contiguous())

    def forward(self, xs):
        z = []
        for i, x in enumerate(xs):
            x = self.m[i](x)
            bs, _, ny, nx = x.shape
            x = x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            xy, wh, conf = x.sigmoid().split((2, 2, self.no - 4), 4)
            xy = (xy * 2 + self.grids[i]) * STRIDES[i]
            wh = (wh * 2) ** 2 * self.anchor_grids[i]
            z.append(torch.cat((xy, wh, conf), 4).view(bs, self.na * nx * ny, self.no))
        return torch.cat(z, 1)


class YOLOv5(nn.Module):
    def __init__(self, width=0.50, depth=0.33, classes=80, image=320):
        super().__init__()
        ch = lambda c: math.ceil(c * width / 8) * 8
        n = lambda k: max(round(k * depth), 1)
        self.b0 = Conv(3, ch(64), 6, 2, 2)
        self.b1 = Conv(ch(64), ch(128), 3, 2)
        self.b2 = C3(ch(128), ch(128), n(3))
        self.b3 = Conv(ch(128), ch(256), 3, 2)
        self.b4 = C3(ch(256), ch(256), n(6))
        self.b5 = Conv(ch(256), ch(512), 3, 2)
        self.b6 = C3(ch(512), ch(512), n(9))
        self.b7 = Conv(ch(512), ch(1024), 3, 2)
        self.b8 = C3(ch(1024), ch(1024), n(3))
        self.b9 = SPPF(ch(1024), ch(1024))
        self.h10 = Conv(ch(1024), ch(512), 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.h13 = C3(ch(1024), ch(512), n(3), False)
        self.h14 = Conv(ch(512), ch(256), 1)
        self.h17 = C3(ch(512), ch(256), n(3), False)
        self.h18 = Conv(ch(256), ch(256), 3, 2)
        self.h20 = C3(ch(512), ch(512), n(3), False)
        self.h21 = Conv(ch(512), ch(512), 3, 2)
        self.h23 = C3(ch(1024), ch(1024), n(3), False)
        self.detect = Detect([ch(256), ch(512), ch(1024)], classes, image)

    def forward(self, x):
        p4 = self.b4(self.b3(self.b2(self.b1(self.b0(x)))))
        p6 = self.b6(self.b5(p4))
        h10 = self.h10(self.b9(self.b8(self.b7(p6))))
        h14 = self.h14(self.h13(torch.cat((self.up(h10), p6), 1)))
        p3 = self.h17(torch.cat((self.up(h14), p4), 1))
        p4 = self.h20(torch.cat((self.h18(p3), h14), 1))
        p5 = self.h23(torch.cat((self.h21(p4), h10), 1))
        return self.detect([p3, p4, p5])
