"""Memory flat in the data: peak resident memory of `onnx-damp forget` with 1x and 16x the calibration data,
for an .npz (uncompressed and compressed) and an image folder, each run in its own process.

The 16x sets repeat the sample's calibration images (the statistics are then those of a 16x larger set of
the same images; the point is the memory, not the edit). Issue 14's target: 16x within 10% of 1x.

  python bench/memory.py                       # the MNIST sample (.npz) and the CIFAR-10 sample (folder)
  python bench/memory.py --zoo-data /tmp/zoo   # and mnist_burn: an 11,616-wide Gemm input, whose rows the pass
                                               # keeps (in memory at 1x, in a temporary file at 16x)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def peak_rss_mib(args: list[str]) -> float:
    """Peak RSS of one `onnx-damp` process (its own, not this script's).

    Read from /proc/self/status (VmHWM, the high-water mark of the process's own address space, which starts
    afresh at exec). getrusage's ru_maxrss does not: on Linux it keeps the high-water mark of the forked copy
    of this script, so a child started after this script held the 16x data reported this script's size
    (197 MiB instead of 157 MiB for the same run, 2026-12-02).
    """
    code = ("import sys\nfrom onnx_damp.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
            "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')).split()[1]\n"
            "print('RSS', hwm, file=sys.stderr)\nsys.exit(code)")
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"onnx-damp {' '.join(args)} failed:\n{r.stderr[-2000:]}")
    kib = int(next(line for line in r.stderr.splitlines() if line.startswith("RSS")).split()[1])
    return kib / 1024


def repeated_npz(src: Path, out: Path, times: int, compressed: bool) -> Path:
    with np.load(src, allow_pickle=False) as z:
        x, y = z["x"], z["y"]
    save = np.savez_compressed if compressed else np.savez
    save(out, x=np.concatenate([x] * times), y=np.concatenate([y] * times))
    return out


def repeated_folder(src: Path, out: Path, times: int) -> Path:
    for cls in sorted(p for p in src.iterdir() if p.is_dir()):
        dst = out / cls.name
        dst.mkdir(parents=True)
        for k in range(times):
            for f in cls.iterdir():
                os.link(f, dst / f"{k}_{f.name}") if k else shutil.copy(f, dst / f.name)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--times", type=int, default=16)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--zoo-data", type=Path, default=None, help="zoo/prepare.py's folder: adds mnist_burn")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        mnist = ROOT / "samples" / "mnist"
        for compressed in (False, True):
            kind = ".npz, compressed" if compressed else ".npz"
            rss = {}
            for n in (1, args.times):
                data = repeated_npz(mnist / "calib.npz", t / f"m{n}{compressed}.npz", n, compressed)
                rss[n] = peak_rss_mib(["forget", str(mnist / "model.onnx"), "--data", str(data), "--forget", "3",
                                       "-o", str(t / "e.onnx"), "-q", "--feature-samples", "0"])
            rows.append({"sample": "mnist", "data": kind, "rss_1x_mib": rss[1], f"rss_{args.times}x_mib": rss[args.times],
                         "ratio": rss[args.times] / rss[1]})
        cifar = ROOT / "samples" / "cifar10"
        rss = {}
        for n in (1, args.times):
            folder = repeated_folder(cifar / "calib", t / f"c{n}", n)
            rss[n] = peak_rss_mib(["forget", str(cifar / "model.onnx"), "--data", str(folder), "--preprocess",
                                   str(cifar / "preprocess.json"), "--forget", "3", "-o", str(t / "c.onnx"), "-q",
                                   "--feature-samples", "0"])
        rows.append({"sample": "cifar10", "data": "image folder", "rss_1x_mib": rss[1],
                     f"rss_{args.times}x_mib": rss[args.times], "ratio": rss[args.times] / rss[1]})
        burn = args.zoo_data / "mnist_burn" / "calib.npz" if args.zoo_data else None
        if burn is not None and burn.exists():
            rss = {}
            for n in (1, args.times):
                data = repeated_npz(burn, t / f"b{n}.npz", n, False)
                rss[n] = peak_rss_mib(["forget", str(ROOT / "zoo" / "models" / "mnist_burn" / "model.onnx"), "--data",
                                       str(data), "--forget", "3", "-o", str(t / "b.onnx"), "-q",
                                       "--feature-samples", "0"])
            rows.append({"sample": "mnist_burn (zoo)", "data": ".npz, 11,616-wide rows kept", "rss_1x_mib": rss[1],
                         f"rss_{args.times}x_mib": rss[args.times], "ratio": rss[args.times] / rss[1]})
    print(f"| sample | data | peak RSS 1x (MiB) | peak RSS {args.times}x (MiB) | ratio |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sample']} | {r['data']} | {r['rss_1x_mib']:.0f} | {r[f'rss_{args.times}x_mib']:.0f} | {r['ratio']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
