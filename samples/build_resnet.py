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
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from build_samples import FASHION_CLASSES, accuracy, load_split, preprocess, save_single_file  # noqa: E402
from build_vit import check_export, training_subset, write_subsets  # noqa: E402

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
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for ep in range(epochs):
        order = rng.permutation(len(x))
        t0, tot = time.time(), 0.0
        for i in range(0, len(x), batch):
            idx = torch.from_numpy(order[i:i + batch])
            dx, dy = rng.integers(-2, 3, size=2)
            xb = torch.roll(xt[idx], shifts=(int(dy), int(dx)), dims=(2, 3))
            loss = nn.functional.cross_entropy(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
        print(f"  epoch {ep + 1}/{epochs} loss {tot / len(x):.4f} ({time.time() - t0:.0f}s)", flush=True)
    return model.eval()


def export(model: nn.Module, path: Path, meta: dict) -> None:
    """TorchScript exporter, opset 17, dynamic batch; BatchNorm folded in eval mode; one self-contained file."""
    dummy = torch.zeros(2, 1, 28, 28)
    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy TorchScript-based export": wanted here
        torch.onnx.export(model, (dummy,), str(tmp), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    save_single_file(tmp, path, meta)
    check_export(model, path)


def build(folder: Path, epochs: int, per_class: int | None, root: Path = HERE) -> None:
    out = root / NAME
    out.mkdir(parents=True, exist_ok=True)
    xtr_u8, ytr = load_split(folder, "train")
    xte_u8, yte = load_split(folder, "test")
    xtr, xte = preprocess(xtr_u8), preprocess(xte_u8)
    write_subsets(out, xtr, ytr, xte, yte)
    sub = training_subset(ytr, per_class)
    xtr, ytr = xtr[sub], ytr[sub]
    meta = {"class_names": json.dumps(FASHION_CLASSES), "dataset": "fashion_mnist", "architecture": "resnet18"}
    print(f"[{NAME}] training original on {len(xtr)} images", flush=True)
    t0 = time.time()
    model = train(xtr, ytr, epochs, seed=0)
    acc = accuracy(model, xte, yte)
    print(f"[{NAME}] original test accuracy {acc.mean():.4f} per class {np.round(acc, 3).tolist()} "
          f"({time.time() - t0:.0f}s)", flush=True)
    export(model, out / "model.onnx", meta)
    keep = ~np.isin(ytr, FORGET)
    tag = "_".join(map(str, FORGET))
    print(f"[{NAME}] retraining from scratch without class(es) {FORGET} on {keep.sum()} images", flush=True)
    t0 = time.time()
    ref = train(xtr[keep], ytr[keep], epochs, seed=0)
    acc = accuracy(ref, xte, yte)
    print(f"[{NAME}] retrained test accuracy per class {np.round(acc, 3).tolist()} ({time.time() - t0:.0f}s)",
          flush=True)
    export(ref, out / f"retrained_without_{tag}.onnx", {**meta, "retrained_without": json.dumps(FORGET)})


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
