"""Build the small Vision Transformer sample (samples/vit_mnist) from real MNIST.

A ViT built from torch.nn: a Conv2d patch embedding (1 -> 64 channels, 7x7 patches, stride 7: 16
tokens), a learnable class token, a learnable position embedding, 4 pre-LayerNorm encoder blocks
(nn.TransformerEncoderLayer, batch_first, 4 heads, MLP 128, GELU, no dropout), a final LayerNorm and a
linear head on the class token. It is trained on the full MNIST training set, exported with the
TorchScript exporter (`torch.onnx.export(..., dynamo=False)`, opset 17, dynamic batch axis), and the
same architecture is trained from scratch without class 7 as the retrained reference.

The TorchScript export of nn.MultiheadAttention is the interesting case for onnx-damp: the in-projection
is a MatMul on [tokens, batch, dim] activations (the batch is not on axis 0) and the out-projection a
Gemm on [tokens * batch, dim] rows.

Writes samples/vit_mnist/{model.onnx, retrained_without_7.onnx, calib.npz, test.npz}; calibration and
test subsets are drawn exactly as in build_samples.py (300 training / 500 test images per class, same
seeds), so they equal samples/mnist's.

  python samples/build_vit.py --mnist-dir package/data [--out samples] [--epochs 4]
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
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from build_samples import MNIST_CLASSES, accuracy, load_split, preprocess, save_single_file, stratified  # noqa: E402

NAME = "vit_mnist"
FORGET = [7]


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
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for ep in range(epochs):
        order = rng.permutation(len(x))
        t0, tot = time.time(), 0.0
        for i in range(0, len(x), batch):
            idx = torch.from_numpy(order[i:i + batch])
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
        print(f"  epoch {ep + 1}/{epochs} loss {tot / len(x):.4f} ({time.time() - t0:.0f}s)", flush=True)
    return model.eval()


def export(model: ViT, path: Path, meta: dict) -> None:
    """TorchScript exporter, opset 17, dynamic batch; one self-contained file."""
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


def build(folder: Path, epochs: int, root: Path = HERE) -> None:
    out = root / NAME
    out.mkdir(parents=True, exist_ok=True)
    xtr_u8, ytr = load_split(folder, "train")
    xte_u8, yte = load_split(folder, "test")
    xtr, xte = preprocess(xtr_u8), preprocess(xte_u8)
    cal = stratified(ytr, 300, seed=1)
    tst = stratified(yte, 500, seed=2)
    np.savez_compressed(out / "calib.npz", x=xtr[cal], y=ytr[cal])
    np.savez_compressed(out / "test.npz", x=xte[tst], y=yte[tst])
    labels = json.dumps(MNIST_CLASSES)
    meta = {"class_names": labels, "dataset": "mnist", "architecture": "vit"}
    print(f"[{NAME}] training original on {len(xtr)} images", flush=True)
    model = train(xtr, ytr, epochs, seed=0)
    acc = accuracy(model, xte, yte)
    print(f"[{NAME}] original test accuracy {acc.mean():.4f} per class {np.round(acc, 3).tolist()}", flush=True)
    export(model, out / "model.onnx", meta)
    keep = ~np.isin(ytr, FORGET)
    tag = "_".join(map(str, FORGET))
    print(f"[{NAME}] retraining from scratch without class(es) {FORGET} on {keep.sum()} images", flush=True)
    ref = train(xtr[keep], ytr[keep], epochs, seed=0)
    acc = accuracy(ref, xte, yte)
    print(f"[{NAME}] retrained test accuracy per class {np.round(acc, 3).tolist()}", flush=True)
    export(ref, out / f"retrained_without_{tag}.onnx", {**meta, "retrained_without": json.dumps(FORGET)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mnist-dir", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1 is far faster than 2 when another process shares the cores)")
    ap.add_argument("--out", type=Path, default=HERE, help="folder to write vit_mnist/ into")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    build(args.mnist_dir, args.epochs, args.out)


if __name__ == "__main__":
    main()
