"""One epoch of Fashion-MNIST in PyTorch, as `sparsify train` runs it, for scripts/bench-training.

Usage: bench_training.py MODEL DATA_DIR THREADS TRAIN_SUBSET TEST_SUBSET [--profile]; prints the seconds of one
epoch at batch 128 (SGD, Nesterov momentum 0.9, weight decay 5e-4, cross-entropy) plus one
evaluation of the test set in batches of 500, the data already in memory as normalised tensors;
with --profile, also where the time went (data, forward, backward, optimizer, evaluation) on stderr.
"""
import gzip, sys, time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def idx(path):
    with gzip.open(path) as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


def resnet20():
    layers, cin = [nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()], 16
    for stage, width in enumerate([16, 32, 64]):
        for block in range(3):
            layers.append(Block(cin, width, 2 if stage > 0 and block == 0 else 1))
            cin = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def lenet5():
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Linear(84, 10))


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))


def main():
    model_name, data, threads, train_subset, test_subset = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    profile = len(sys.argv) > 6 and sys.argv[6] == "--profile"
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    load = lambda name: idx(f"{data}/{name}")
    x_train, y_train = load("train-images-idx3-ubyte.gz"), load("train-labels-idx1-ubyte.gz")
    x_test, y_test = load("t10k-images-idx3-ubyte.gz"), load("t10k-labels-idx1-ubyte.gz")
    if train_subset:
        x_train, y_train = x_train[:train_subset], y_train[:train_subset]
    if test_subset:
        x_test, y_test = x_test[:test_subset], y_test[:test_subset]
    tensor = lambda x: ((torch.from_numpy(x.astype(np.float32)) / 255 - 0.2860) / 0.3530).unsqueeze(1)
    x_train, x_test = tensor(x_train), tensor(x_test)
    y_train, y_test = torch.from_numpy(y_train.astype(np.int64)), torch.from_numpy(y_test.astype(np.int64))
    model = {"mlp": mlp, "lenet5": lenet5, "resnet20": resnet20}[model_name]()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    phases = dict.fromkeys(["data", "forward", "backward", "optimizer", "evaluation"], 0.0)
    start = lap = time.perf_counter()

    def done(phase):
        nonlocal lap
        now = time.perf_counter()
        phases[phase] += now - lap
        lap = now

    model.train()
    order = torch.randperm(len(y_train))
    for i in range(0, len(order), 128):
        batch = order[i:i + 128]
        x, y = x_train[batch], y_train[batch]
        done("data")
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        done("forward")
        loss.backward()
        done("backward")
        optimizer.step()
        done("optimizer")
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y_test), 500):
            correct += (model(x_test[i:i + 500]).argmax(1) == y_test[i:i + 500]).sum().item()
    done("evaluation")
    total = time.perf_counter() - start
    print(f"{total:.3f}")
    if profile:
        print("profile: " + ", ".join(f"{k} {v:.3f} s ({100 * v / total:.0f}%)" for k, v in phases.items()), file=sys.stderr)


main()
