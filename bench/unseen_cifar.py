"""More models the method was never tuned on, in layouts third-party exporters write: trained here with torch
on CIFAR-10 (JPEG copy), plus a scikit-learn MLP on scikit-learn's digits exported by skl2onnx.

  keras_vgg_cifar   Keras-style: NHWC input in [0, 1] (a Transpose inside the graph), Conv -> ReLU ->
                    BatchNormalization (not foldable into the Conv), Dropout, dense layers as MatMul + Add,
                    Softmax output (probabilities, not logits); batch fixed at 1 as Keras exports often are
  mobilenet_cifar   MobileNet-style: depthwise-separable blocks (depthwise Conv, BN folded), ReLU6 (Clip),
                    global average pooling, Linear head; per-channel mean/std NCHW input, dynamic batch
  skl_mlp_digits    scikit-learn MLPClassifier (64-64-32-10) on load_digits (8x8, values / 16), skl2onnx's
                    default export: a label output first, then a ZipMap of probabilities (needs skl2onnx and
                    scikit-learn, e.g. in their own venv: `pip install skl2onnx scikit-learn`)

Each gets 300 calibration images per class from its training set and the full 10k test set as .npz
(the digits: a stratified 60/40 split of its 1,797 images):

  python bench/unseen_cifar.py --tar ../shared/data/cifar10-jpeg.tar.gz --out /tmp/unseen [models...]
  python bench/zoo.py --models --extra keras_vgg_cifar=/tmp/unseen/keras_vgg_cifar.onnx,...,cifar10 ...

Not shipped; nothing in the method was chosen on them. Numbers from the CIFAR-10 models are on
"CIFAR-10 (JPEG copy)".
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

ALL = ["keras_vgg_cifar", "mobilenet_cifar", "skl_mlp_digits"]


def calib_indices(y, per_class=300, seed=1):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in range(10)])


def build_torch(name, out, tar, epochs):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "samples"))
    from build_cifar10 import MEAN, STD, augment, read_tar
    torch.manual_seed(0)
    torch.set_num_threads(2)
    data = read_tar(Path(tar))
    (xtr, ytr), (xte, yte) = data["train"], data["test"]

    class KerasVGG(nn.Module):  # input NHWC [0, 1]
        def __init__(s):
            super().__init__()
            def block(i, o):
                return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(o),
                                     nn.Conv2d(o, o, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(o),
                                     nn.MaxPool2d(2), nn.Dropout(0.2))
            s.f = nn.Sequential(block(3, 24), block(24, 48), block(48, 96))
            s.w1 = nn.Parameter(torch.randn(96 * 16, 128) * (2 / (96 * 16)) ** 0.5)
            s.b1 = nn.Parameter(torch.zeros(128))
            s.w2 = nn.Parameter(torch.randn(128, 10) * (1 / 128) ** 0.5)
            s.b2 = nn.Parameter(torch.zeros(10))
            s.drop = nn.Dropout(0.3)

        def forward(s, x, logits=False):
            h = s.f(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).flatten(1)  # Keras flattens NHWC
            z = torch.matmul(s.drop(F.relu(torch.matmul(h, s.w1) + s.b1)), s.w2) + s.b2
            return z if logits else torch.softmax(z, 1)

    class MobileNet(nn.Module):
        def __init__(s):
            super().__init__()
            def dws(i, o, stride):
                return nn.Sequential(nn.Conv2d(i, i, 3, stride, 1, groups=i, bias=False), nn.BatchNorm2d(i),
                                     nn.ReLU6(), nn.Conv2d(i, o, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU6())
            s.f = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(),
                                dws(32, 64, 1), dws(64, 128, 2), dws(128, 128, 1), dws(128, 256, 2),
                                dws(256, 256, 1))
            s.fc = nn.Linear(256, 10)

        def forward(s, x, logits=True):
            return s.fc(F.adaptive_avg_pool2d(s.f(x), 1).flatten(1))

    keras = name == "keras_vgg_cifar"
    net = KerasVGG() if keras else MobileNet()

    def prep(u8):  # the model's own input convention
        x = u8.astype(np.float32) / 255.0
        return np.ascontiguousarray(x if keras else ((x - MEAN) / STD).transpose(0, 3, 1, 2))

    # trained on exactly what the exported model reads: its own layout and scaling
    Xtr, Xte = torch.from_numpy(prep(xtr)), torch.from_numpy(prep(xte))
    Ytr = torch.from_numpy(ytr)
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    gen = torch.Generator().manual_seed(0)
    t0 = time.time()
    for ep in range(epochs):
        net.train()
        perm = torch.randperm(len(Xtr), generator=gen)
        for i in range(0, len(Xtr) - 127, 128):
            b = perm[i:i + 128]
            xb = Xtr[b]
            xb = augment(xb.permute(0, 3, 1, 2), gen).permute(0, 2, 3, 1) if keras else augment(xb, gen)
            loss = F.cross_entropy(net(xb.contiguous(), logits=True), Ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"{name} epoch {ep + 1}/{epochs} ({time.time() - t0:.0f} s)", flush=True)
    net.eval()
    with torch.no_grad():
        acc = np.mean(np.concatenate([net(Xte[i:i + 500]).argmax(1).numpy() for i in range(0, len(Xte), 500)]) == yte)
    cal = calib_indices(ytr)
    np.savez(f"{out}/{name}_calib.npz", x=Xtr[cal].numpy(), y=ytr[cal])
    np.savez(f"{out}/{name}_test.npz", x=Xte.numpy(), y=yte)
    path = f"{out}/{name}.onnx"
    if keras:  # Keras exports often fix the batch at 1
        torch.onnx.export(net, Xte[:1], path, input_names=["input_1"], output_names=["dense_1"], dynamo=False)
    else:
        torch.onnx.export(net, Xte[:2], path, input_names=["input"], output_names=["logits"], dynamo=False,
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    print(name, f"test acc {acc:.4f}", f"{time.time() - t0:.0f}s", flush=True)


def build_sklearn(out):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from skl2onnx import to_onnx
    import onnx
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.4, random_state=0, stratify=y)
    m = MLPClassifier((64, 32), max_iter=600, random_state=0).fit(xtr, ytr)
    onnx.save(to_onnx(m, xtr[:1]), f"{out}/skl_mlp_digits.onnx")
    np.savez(f"{out}/skl_mlp_digits_calib.npz", x=xtr, y=ytr.astype(np.int64))
    np.savez(f"{out}/skl_mlp_digits_test.npz", x=xte, y=yte.astype(np.int64))
    print("skl_mlp_digits", f"test acc {m.score(xte, yte):.4f}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tar", default="../shared/data/cifar10-jpeg.tar.gz")
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("models", nargs="*", default=ALL)
    args = ap.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for name in args.models:
        if name == "skl_mlp_digits":
            build_sklearn(args.out)
        else:
            build_torch(name, args.out, args.tar, args.epochs)


if __name__ == "__main__":
    main()
