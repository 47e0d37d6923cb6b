"""The CUDA path: `forget --device cuda` against `--device cpu` on the shipped samples, side by side in one run.

Needs onnxruntime-gpu (`pip install '.[gpu]'`, without the CPU-only onnxruntime) and a visible GPU; where
either is missing it says so in one line and exits 0 (nothing to measure), so CI machines skip it cleanly.

  python bench/cuda.py                      # mnist, fashion_mnist, vit_mnist, cifar10
  python bench/cuda.py --samples resnet18_fashion --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORGET = {"mnist": [3], "fashion_mnist": [0], "vit_mnist": [7], "vit_fashion": [6], "resnet18_fashion": [0],
          "cifar10": [3]}


def cuda_available() -> str:
    """'' when onnxruntime can run on a GPU here, else why not."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} has no CUDA execution provider (install onnx-damp[gpu])"
    return ""


def run(sample: str, device: str) -> float:
    import onnx_damp
    folder = ROOT / "samples" / sample
    pre = folder / "preprocess.json" if (folder / "calib").is_dir() else None
    calib = folder / "calib" if pre else folder / "calib.npz"
    test = folder / "test" if pre else folder / "test.npz"
    t0 = time.perf_counter()
    onnx_damp.forget(folder / "model.onnx", calib, FORGET[sample], eval_data=test, device=device, preprocess=pre,
                     feature_samples=0, quiet=True)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", nargs="*", default=["mnist", "fashion_mnist", "vit_mnist", "cifar10"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    why = cuda_available()
    if why:
        print(f"skipped: {why}", file=sys.stderr)
        return 0
    rows = []
    for s in args.samples:
        run(s, "cuda")  # warm-up: CUDA context and kernels
        cpu, gpu = run(s, "cpu"), run(s, "cuda")
        rows.append({"sample": s, "cpu_s": cpu, "cuda_s": gpu, "speedup": cpu / gpu})
        print(f"{s}: cpu {cpu:.2f} s, cuda {gpu:.2f} s, {cpu / gpu:.2f}x", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
