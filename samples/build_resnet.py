"""Build the torchvision resnet18 sample (samples/resnet18_fashion) from real Fashion-MNIST.

torchvision.models.resnet18(num_classes=10) adapted to 28x28 one-channel input: conv1 becomes a 3x3,
stride 1, padding 1 convolution from 1 channel to 64 (no bias, as torchvision's); everything else is
torchvision's own, the 3x3 stride-2 max pool included, so layer1 runs at 14x14, layer2 at 7x7, layer3 at
4x4 and layer4 at 2x2 before the global average pool and the fc head (11.2 M parameters, 21 editable
Conv/Gemm operators). It is trained on a stratified subset of the training set (--per-class images of each
class, seed 0; the defaults are the shipped sample's: 1000 per class, 2 epochs, AdamW with a one-cycle
schedule, batch 64), exported with the TorchScript exporter (`torch.onnx.export(..., dynamo=False)`,
opset 17, dynamic batch axis, BatchNorm folded into the Convs in eval mode), and the same architecture is
trained from scratch on the same subset without class 0 (T-shirt/top, as the fashion_mnist CNN sample)
as the retrained reference.

Needs torchvision, which must match the torch build: in a separate environment,
  python3 -m venv /work/tv-venv && /work/tv-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 \\
      onnx onnxscript onnxruntime numpy

Writes samples/resnet18_fashion/{model.onnx, retrained_without_0.onnx, calib.npz, test.npz}; calibration
and test subsets are drawn from the full splits exactly as in build_samples.py (300 training / 500 test
images per class, same seeds), so they equal samples/fashion_mnist's.

  /work/tv-venv/bin/python samples/build_resnet.py --fashion-dir /usr/share/datasets/fashion-mnist \\
      --per-class 1000 --epochs 2 --threads 1

On one shared CPU core this took 19 min for the original (86.07% test accuracy) and about as long for
the reference; the model is 44.7 MB (float32). More images per class or epochs give a more accurate model
at proportional cost.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from build_samples import FASHION_CLASSES, fit  # noqa: E402
from build_vit import build_pair, export  # noqa: E402

NAME = "resnet18_fashion"
FORGET = [0]


def resnet18_28x28() -> nn.Module:
    """torchvision resnet18 for 28x28 one-channel images: a 3x3 stride-1 conv1, torchvision's max pool kept."""
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
    return model


def train(x: np.ndarray, y: np.ndarray, epochs: int, seed: int, batch: int = 64, lr: float = 2e-3) -> nn.Module:
    """Adam(W) with a one-cycle schedule and light shift augmentation (random rolls of up to 2 pixels)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = resnet18_28x28()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * int(np.ceil(len(x) / batch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.25)
    return fit(model, opt, sched, x, y, epochs, rng, batch)


def build(folder: Path, epochs: int, per_class: int | None, root: Path = HERE) -> None:
    meta = {"class_names": json.dumps(FASHION_CLASSES), "dataset": "fashion_mnist", "architecture": "resnet18"}
    build_pair(NAME, folder, epochs, per_class, FORGET, meta, train, export, root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fashion-dir", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--per-class", type=int, default=1000,
                    help="train on a stratified subset of this many training images per class (0: all)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1 is far faster than 2 when another process shares the cores)")
    ap.add_argument("--out", type=Path, default=HERE, help="folder to write resnet18_fashion/ into")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    build(args.fashion_dir, args.epochs, args.per_class or None, args.out)


if __name__ == "__main__":
    main()
