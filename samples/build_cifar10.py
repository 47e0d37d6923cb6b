"""Build the CIFAR-10 sample: a small ResNet trained on CIFAR-10 (JPEG copy), a reference retrained without
one class, and small calibration / test subsets.

Needs the optional `samples` extra (torch, CPU build is enough) and Pillow. The images come from
`../shared/data/cifar10-jpeg.tar.gz` (CIFAR-10 re-encoded as JPEG, quality about 75): every number from this
sample is on "CIFAR-10 (JPEG copy)", a few points below the original set.

  python samples/build_cifar10.py --tar ../shared/data/cifar10-jpeg.tar.gz [--epochs 18] [--forget 3]

Writes samples/cifar10/{model.onnx, retrained_without_<c>.onnx, calib/, test/, preprocess.json, labels.txt,
train_log.json}: calib/ (300 training images per class) and test/ (500 test images per class) are image
folders holding the tarball's own JPEG files (`onnx-damp forget ... --data samples/cifar10/calib
--preprocess samples/cifar10/preprocess.json`).
Preprocessing: RGB, [0, 1], mean/std of CIFAR-10 per channel, NCHW (samples/cifar10/preprocess.json).
"""
from __future__ import annotations

import argparse
import io
import json
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
STD = np.array([0.2470, 0.2435, 0.2616], np.float32)


def read_tar(path: Path, raw: dict | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (uint8 [N, 32, 32, 3], int64 labels)} from the JPEG tarball (train/<class>/*.jpg, test/...).

    raw: filled with {split: [(file name, JPEG bytes), ...]} in the same order, when given."""
    from PIL import Image
    out: dict[str, tuple[list, list]] = {"train": ([], []), "test": ([], [])}
    names: dict[str, list[str]] = {"train": [], "test": []}
    with tarfile.open(path, "r|gz") as tf:  # streamed: random access into a .tar.gz re-reads it from the start
        for m in tf:
            parts = Path(m.name).parts
            if not m.isfile() or not m.name.endswith(".jpg") or len(parts) < 3:
                continue
            split, cls = parts[-3], parts[-2]
            if split not in out or cls not in CLASSES:
                continue
            blob = tf.extractfile(m).read()
            with Image.open(io.BytesIO(blob)) as im:
                out[split][0].append(np.asarray(im.convert("RGB"), dtype=np.uint8))
            out[split][1].append(CLASSES.index(cls))
            names[split].append(m.name)
            if raw is not None:
                raw.setdefault(split, []).append((m.name, blob))
    result = {}
    for s, (x, y) in out.items():  # file-name order, whatever order the tarball holds them in
        order = np.argsort(np.array(names[s]), kind="stable")
        result[s] = (np.stack(x)[order], np.array(y, np.int64)[order])
        if raw is not None:
            raw[s] = [raw[s][i] for i in order]
    return result


def preprocess(x_u8: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW, [0, 1] then per-channel mean/std (preprocess.json says the same)."""
    return np.ascontiguousarray(((x_u8.astype(np.float32) / 255.0 - MEAN) / STD).transpose(0, 3, 1, 2))


def conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Residual(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.a, self.b = conv_bn(ch, ch), conv_bn(ch, ch)

    def forward(self, x):
        return x + self.b(self.a(x))


class ResNet9(nn.Module):
    """The DAWNBench ResNet-9 layout (prep, 3 stages with residual blocks after stages 1 and 3), width w."""

    def __init__(self, w: int = 32, classes: int = 10):
        super().__init__()
        self.prep = conv_bn(3, w)
        self.layer1 = nn.Sequential(conv_bn(w, 2 * w), nn.MaxPool2d(2), Residual(2 * w))
        self.layer2 = nn.Sequential(conv_bn(2 * w, 4 * w), nn.MaxPool2d(2))
        self.layer3 = nn.Sequential(conv_bn(4 * w, 8 * w), nn.MaxPool2d(2), Residual(8 * w))
        self.fc = nn.Linear(8 * w, classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.fc(torch.flatten(F.adaptive_max_pool2d(x, 1), 1))


def augment(xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop with 4-pixel reflect padding and horizontal flip, per batch element."""
    n = xb.shape[0]
    pad = F.pad(xb, (4, 4, 4, 4), mode="reflect")
    dx, dy = torch.randint(0, 9, (2, n), generator=gen)
    idx = torch.arange(32)
    rows = (dy[:, None] + idx[None, :])  # [n, 32]
    cols = (dx[:, None] + idx[None, :])
    out = pad[torch.arange(n)[:, None, None, None], torch.arange(3)[None, :, None, None],
              rows[:, None, :, None], cols[:, None, None, :]]
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def train(x: np.ndarray, y: np.ndarray, epochs: int, width: int, seed: int, batch: int = 256,
          log=print) -> nn.Module:
    """SGD with Nesterov momentum, one-cycle learning rate, label smoothing 0.1, crop+flip."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = ResNet9(width).to(memory_format=torch.channels_last)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    steps = epochs * (len(x) // batch)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=steps, pct_start=0.25)
    model.train()
    for ep in range(epochs):
        t0, perm, tot = time.time(), torch.randperm(len(x), generator=gen), 0.0
        for i in range(len(x) // batch):
            b = perm[i * batch:(i + 1) * batch]
            xb = augment(xt[b], gen).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(xb), yt[b], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss)
        log(f"epoch {ep + 1}/{epochs}: loss {tot / (len(x) // batch):.3f} ({time.time() - t0:.0f} s)")
    return model.eval()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        pred = np.concatenate([model(torch.from_numpy(x[i:i + 500])).argmax(1).numpy() for i in range(0, len(x), 500)])
    return float(np.mean(pred == y))


def export(model: nn.Module, path: Path, note: dict) -> None:
    model = model.to(memory_format=torch.contiguous_format)
    torch.onnx.export(model, torch.zeros(1, 3, 32, 32), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    m = onnx.load(str(path))
    for k, v in {"class_names": json.dumps(CLASSES), **note}.items():
        m.metadata_props.add(key=k, value=v)
    onnx.save(m, str(path))


def subset_indices(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([np.sort(rng.choice(np.flatnonzero(y == c), per_class, replace=False)) for c in range(10)])


def write_folder(folder: Path, raw: list[tuple[str, bytes]], idx: np.ndarray, y: np.ndarray) -> None:
    """The tarball's own JPEG bytes (never re-encoded) of the picked images, as folder/<class>/<file>.jpg."""
    for i in idx:
        name, blob = raw[i]
        dst = folder / CLASSES[y[i]] / Path(name).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(blob)


import onnx  # noqa: E402  (after torch, as the other sample builders do)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tar", type=Path, default=HERE.parent.parent / "shared" / "data" / "cifar10-jpeg.tar.gz")
    ap.add_argument("--out", type=Path, default=HERE / "cifar10")
    ap.add_argument("--epochs", type=int, default=18)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--forget", type=int, default=3, help="class left out of the retrained reference (3 = cat)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--calib-per-class", type=int, default=300)
    ap.add_argument("--test-per-class", type=int, default=500)
    ap.add_argument("--only", choices=["model", "reference", "data"], default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    raw: dict = {}
    data = read_tar(a.tar, raw)
    (xtr8, ytr), (xte8, yte) = data["train"], data["test"]
    xtr, xte = preprocess(xtr8), preprocess(xte8)
    log_path = a.out / "train_log.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else {}
    note = {"dataset": "CIFAR-10 (JPEG copy)", "preprocess": "RGB, [0,1], mean/std per channel, NCHW"}
    if a.only in (None, "data"):  # image folders of the tarball's JPEG files: 2.6 MB, where float16 .npz were 34 MB
        write_folder(a.out / "calib", raw["train"], subset_indices(ytr, a.calib_per_class, 0), ytr)
        write_folder(a.out / "test", raw["test"], subset_indices(yte, a.test_per_class, 1), yte)
        (a.out / "preprocess.json").write_text(json.dumps(
            {"mode": "RGB", "scale": True, "mean": MEAN.tolist(), "std": STD.tolist(), "layout": "NCHW"}) + "\n")
        (a.out / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    for what in (["model", "reference"] if a.only is None else [a.only] if a.only != "data" else []):
        keep = np.ones(len(ytr), bool) if what == "model" else ytr != a.forget
        t0 = time.time()
        model = train(xtr[keep], ytr[keep], a.epochs, a.width, seed=0 if what == "model" else 1,
                      log=lambda s: print(f"[{what}] {s}", flush=True))
        acc = accuracy(model, xte, yte)
        name = "model.onnx" if what == "model" else f"retrained_without_{a.forget}.onnx"
        log[what] = {"file": name, "epochs": a.epochs, "width": a.width, "test_accuracy_all_10000": acc,
                     "left_out": None if what == "model" else a.forget, "train_seconds": round(time.time() - t0)}
        if what == "reference":
            r = yte != a.forget
            log[what]["test_accuracy_retain_classes"] = accuracy(model, xte[r], yte[r])
        print(f"[{what}] test accuracy (CIFAR-10 JPEG copy, 10,000 images): {acc:.4f}", flush=True)
        export(model, a.out / name, {**note, "test_accuracy": f"{acc:.4f}"})
        log_path.write_text(json.dumps(log, indent=1) + "\n")


if __name__ == "__main__":
    main()
