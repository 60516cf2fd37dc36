"""The paper's CIFAR-10 job in plain PyTorch, as a PyTorch user would write it: the
reference side of benchmarks/vs_pytorch.py.

    python benchmarks/pytorch_caffe_cifar10.py DATA.npz --steps 1000

The network is Caffe's "cifar10_full" as the paper describes it (conv 5x5x32 std 1e-4 -
max pool 3/2 - ReLU - LRN within channel - conv 5x5x32 std 0.01 - ReLU - avg pool 3/2 -
LRN - conv 5x5x64 std 0.01 - ReLU - avg pool 3/2 - ip 10 std 0.01; pooling rounds up),
trained with PyTorch's own SGD (momentum 0.9, weight decay 0.004, the paper's per-layer
multipliers as parameter groups; PyTorch applies the rate after the momentum, Caffe
before it: the arithmetic is the same) and `CyclicLR(mode="triangular2")`, batch 100,
inputs minus the mean image, a fresh order of the training set every epoch, test
accuracy at the end. DATA.npz holds the decoded uint8 images and labels
(train_images, train_labels, test_images, test_labels), so that both sides read the
same arrays from disk. Prints one JSON line of timings.
"""

import time

started = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

imported = time.perf_counter()


class CaffeCifar10(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 32, 5, padding=2)
        self.conv3 = nn.Conv2d(32, 64, 5, padding=2)
        self.ip1 = nn.Linear(64 * 4 * 4, 10)
        for layer, std in ((self.conv1, 1e-4), (self.conv2, 0.01), (self.conv3, 0.01),
                           (self.ip1, 0.01)):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)

    @staticmethod
    def lrn(x):  # Caffe's WITHIN_CHANNEL LRN, local size 3, alpha 5e-5, beta 0.75
        return x * (1 + 5e-5 * F.avg_pool2d(x * x, 3, 1, 1, count_include_pad=True)) ** -0.75

    def forward(self, x):
        x = self.lrn(F.relu(F.max_pool2d(self.conv1(x), 3, 2, ceil_mode=True)))
        x = self.lrn(F.avg_pool2d(F.relu(self.conv2(x)), 3, 2, ceil_mode=True,
                                  count_include_pad=False))
        x = F.avg_pool2d(F.relu(self.conv3(x)), 3, 2, ceil_mode=True, count_include_pad=False)
        return self.ip1(x.flatten(1))


def make_optimizer(net):
    """PyTorch's SGD with Caffe's per-layer multipliers, and CyclicLR triangular2."""
    groups = []  # Caffe's lr and decay multipliers: biases 2x rate; ip1 250x decay
    for name, module in (("conv1", net.conv1), ("conv2", net.conv2), ("conv3", net.conv3),
                         ("ip1", net.ip1)):
        groups.append({"params": [module.weight], "lr_mult": 1.0,
                       "weight_decay": 0.004 * (250 if name == "ip1" else 1)})
        groups.append({"params": [module.bias], "lr_mult": 1.0 if name == "conv3" else 2.0,
                       "weight_decay": 0.0 if name == "ip1" else 0.004})
    opt = torch.optim.SGD(groups, lr=0.001, momentum=0.9)
    base = [0.001 * g["lr_mult"] for g in groups]
    top = [0.006 * g["lr_mult"] for g in groups]
    sched = torch.optim.lr_scheduler.CyclicLR(opt, base, top, step_size_up=100,
                                              mode="triangular2", cycle_momentum=False)
    return opt, sched


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()
    torch.manual_seed(0)
    with np.load(args.data) as d:
        train_x = torch.from_numpy(d["train_images"]).permute(0, 3, 1, 2).float()
        train_y = torch.from_numpy(d["train_labels"]).long()
        test_x = torch.from_numpy(d["test_images"]).permute(0, 3, 1, 2).float()
        test_y = torch.from_numpy(d["test_labels"]).long()
    mean = train_x.mean(0, keepdim=True)
    train_x, test_x = train_x - mean, test_x - mean
    loaded = time.perf_counter()

    net = CaffeCifar10()
    opt, sched = make_optimizer(net)
    b = args.batch_size
    per_epoch = len(train_y) // b
    marks = {}
    order = torch.randperm(len(train_y))
    net.train()
    for step in range(args.steps):
        if step % per_epoch == 0:
            order = torch.randperm(len(train_y))
        index = order[(step % per_epoch) * b:(step % per_epoch + 1) * b]
        opt.zero_grad()
        loss = F.cross_entropy(net(train_x[index]), train_y[index])
        loss.backward()
        opt.step()
        sched.step()
        if step == 0:
            marks["first_step"] = time.perf_counter()
        if step == args.steps // 5:
            marks["steady_from"] = (step + 1, time.perf_counter())
    trained = time.perf_counter()
    net.eval()
    with torch.no_grad():
        correct = sum(int((net(test_x[i:i + 500]).argmax(1) == test_y[i:i + 500]).sum())
                      for i in range(0, len(test_y), 500))
    done = time.perf_counter()
    steady_step, steady_time = marks["steady_from"]
    print(json.dumps({
        "import_seconds": imported - started, "data_seconds": loaded - imported,
        "first_step_seconds": marks["first_step"] - loaded,
        "steady_images_per_second": (args.steps - steady_step) * b / (trained - steady_time),
        "train_seconds": trained - loaded, "eval_seconds": done - trained,
        "in_process_seconds": done - started, "test_accuracy": correct / len(test_y),
        "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
