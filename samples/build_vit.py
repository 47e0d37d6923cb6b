"""Build the small Vision Transformer samples (samples/vit_mnist, samples/vit_fashion) from real MNIST / Fashion-MNIST.

A ViT built from torch.nn: a Conv2d patch embedding (1 -> 64 channels, 7x7 patches, stride 7: 16
tokens), a learnable class token, a learnable position embedding, 4 pre-LayerNorm encoder blocks
(nn.TransformerEncoderLayer, batch_first, 4 heads, MLP 128, GELU, no dropout), a final LayerNorm and a
linear head on the class token. It is trained on the MNIST / Fashion-MNIST training set (all of it, or a
stratified subset with --per-class), exported with the TorchScript exporter (`torch.onnx.export(...,
dynamo=False)`, opset 17, dynamic batch axis), and the same architecture is trained from scratch without
one class as the retrained reference: digit 7 for MNIST, class 6 (Shirt, the hardest Fashion-MNIST class,
confused with T-shirt/top, Pullover and Coat) for Fashion-MNIST.

The TorchScript export of nn.MultiheadAttention is the interesting case for onnx-damp: the in-projection
is a MatMul on [tokens, batch, dim] activations (the batch is not on axis 0) and the out-projection a
Gemm on [tokens * batch, dim] rows.

Writes samples/vit_mnist/{model.onnx, retrained_without_7.onnx, calib.npz, test.npz} and
samples/vit_fashion/{model.onnx, retrained_without_6.onnx, calib.npz, test.npz}; calibration and test
subsets are drawn exactly as in build_samples.py (300 training / 500 test images per class, same seeds),
so they equal samples/mnist's and samples/fashion_mnist's.

  python samples/build_vit.py --mnist-dir package/data [--out samples] [--epochs 4]
  python samples/build_vit.py --fashion-dir /usr/share/datasets/fashion-mnist --epochs 4 --threads 1

The shipped vit_fashion was built by that command (the full training set, 4 epochs: 87.34% test accuracy;
8 min for the original and 10 min for the reference on one shared CPU core). --per-class N trains on a
stratified subset of N training images per class instead.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from build_samples import (FASHION_CLASSES, MNIST_CLASSES, accuracy, fit, load_split, preprocess,  # noqa: E402
                           save_single_file, stratified)

# name -> (forget classes of the retrained reference, class names, dataset tag)
DATASETS = {"vit_mnist": ([7], MNIST_CLASSES, "mnist"), "vit_fashion": ([6], FASHION_CLASSES, "fashion_mnist")}


class ViT(nn.Module):
    """A small ViT for 28x28 one-channel images: 16 patch tokens of 7x7 plus a class token."""

    def __init__(self, dim: int = 64, depth: int = 4, heads: int = 4, mlp: int = 128, patch: int = 7,
                 image: int = 28, num_classes: int = 10):
        super().__init__()
        tokens = (image // patch) ** 2
        self.patch_embed = nn.Conv2d(1, dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.ModuleList([
            nn.TransformerEncoderLayer(dim, heads, dim_feedforward=mlp, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        h = self.patch_embed(x).flatten(2).transpose(1, 2)           # [N, 16, D]
        cls = self.cls_token.expand(h.shape[0], -1, -1)
        h = torch.cat([cls, h], dim=1) + self.pos_embed               # [N, 17, D]
        for blk in self.blocks:
            h = blk(h)
        return self.head(self.norm(h)[:, 0])


def train(x: np.ndarray, y: np.ndarray, epochs: int, seed: int, batch: int = 128, lr: float = 3e-3) -> ViT:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = ViT()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n and "token" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n and "token" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": other, "weight_decay": 0.0}], lr=lr)
    steps = epochs * int(np.ceil(len(x) / batch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    return fit(model, opt, sched, x, y, epochs, rng, batch, shift=0, clip=1.0)


def export(model: nn.Module, path: Path, meta: dict) -> None:
    """TorchScript exporter, opset 17, dynamic batch (BatchNorm folded in eval mode); one self-contained file,
    checked against torch. Shared with build_resnet.py."""
    dummy = torch.zeros(2, 1, 28, 28)
    tmp = path.with_suffix(".tmp.onnx")
    # nn.TransformerEncoderLayer would take its fused inference fast path (aten::_transformer_encoder_layer_fwd,
    # not exportable) in eval mode; switch it off so the exporter sees the plain nn.MultiheadAttention ops.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "legacy TorchScript-based export": wanted here
            torch.onnx.export(model, (dummy,), str(tmp), input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                              dynamo=False)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    save_single_file(tmp, path, meta)
    check_export(model, path)


def check_export(model: nn.Module, path: Path) -> None:
    """The exported graph must compute what the torch module does (batch 1 and a larger batch)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        x = torch.rand(n, 1, 28, 28)
        with torch.no_grad():
            ref = model(x).numpy()
        out = sess.run(None, {"input": x.numpy()})[0]
        err = float(np.abs(out - ref).max())
        if err > 1e-3:
            raise RuntimeError(f"{path}: ONNX output differs from torch by {err:.2e} at batch {n}")


def training_subset(y: np.ndarray, per_class: int | None) -> np.ndarray:
    """All training indices, or a stratified subset of per_class images per class (seed 0, sorted)."""
    return np.arange(len(y)) if not per_class else stratified(y, per_class, seed=0)


def write_subsets(out: Path, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray) -> None:
    """Calibration (300 training images per class, seed 1) and test (500 test images per class, seed 2) subsets,
    drawn from the full splits exactly as build_samples.py does."""
    cal = stratified(ytr, 300, seed=1)
    tst = stratified(yte, 500, seed=2)
    np.savez_compressed(out / "calib.npz", x=xtr[cal], y=ytr[cal])
    np.savez_compressed(out / "test.npz", x=xte[tst], y=yte[tst])


def build_pair(name: str, folder: Path, epochs: int, per_class: int | None, forget: list[int], meta: dict,
               train_fn: Callable, export_fn: Callable, root: Path = HERE) -> None:
    """Write samples/<name>: calibration/test subsets, the model trained on the (optionally stratified) training
    split, and the same architecture retrained from scratch without the forget classes. Shared with
    build_resnet.py; train_fn(x, y, epochs, seed) returns the trained module, export_fn(model, path, meta)
    writes it."""
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    xtr_u8, ytr = load_split(folder, "train")
    xte_u8, yte = load_split(folder, "test")
    xtr, xte = preprocess(xtr_u8), preprocess(xte_u8)
    write_subsets(out, xtr, ytr, xte, yte)
    sub = training_subset(ytr, per_class)
    xtr, ytr = xtr[sub], ytr[sub]
    print(f"[{name}] training original on {len(xtr)} images", flush=True)
    t0 = time.time()
    model = train_fn(xtr, ytr, epochs, seed=0)
    acc = accuracy(model, xte, yte)
    print(f"[{name}] original test accuracy {acc.mean():.4f} per class {np.round(acc, 3).tolist()} "
          f"({time.time() - t0:.0f}s)", flush=True)
    export_fn(model, out / "model.onnx", meta)
    keep = ~np.isin(ytr, forget)
    tag = "_".join(map(str, forget))
    print(f"[{name}] retraining from scratch without class(es) {forget} on {keep.sum()} images", flush=True)
    t0 = time.time()
    ref = train_fn(xtr[keep], ytr[keep], epochs, seed=0)
    acc = accuracy(ref, xte, yte)
    print(f"[{name}] retrained test accuracy per class {np.round(acc, 3).tolist()} ({time.time() - t0:.0f}s)",
          flush=True)
    export_fn(ref, out / f"retrained_without_{tag}.onnx", {**meta, "retrained_without": json.dumps(forget)})


def build(folder: Path, epochs: int, root: Path = HERE, name: str = "vit_mnist", per_class: int | None = None) -> None:
    forget, classes, dataset = DATASETS[name]
    meta = {"class_names": json.dumps(classes), "dataset": dataset, "architecture": "vit"}
    build_pair(name, folder, epochs, per_class, forget, meta, train, export, root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mnist-dir", type=Path, help="MNIST idx files: builds vit_mnist")
    ap.add_argument("--fashion-dir", type=Path, help="Fashion-MNIST idx files: builds vit_fashion")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--per-class", type=int, default=None,
                    help="train on a stratified subset of this many training images per class (default: all)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1 is far faster than 2 when another process shares the cores)")
    ap.add_argument("--out", type=Path, default=HERE, help="folder to write vit_mnist/ and vit_fashion/ into")
    args = ap.parse_args()
    if not (args.mnist_dir or args.fashion_dir):
        ap.error("give --mnist-dir and/or --fashion-dir")
    torch.set_num_threads(args.threads)
    if args.mnist_dir:
        build(args.mnist_dir, args.epochs, args.out, "vit_mnist", args.per_class)
    if args.fashion_dir:
        build(args.fashion_dir, args.epochs, args.out, "vit_fashion", args.per_class)


if __name__ == "__main__":
    main()
