"""What `forget`'s validation costs: the same edit with and without --eval-data, the verification features
(--feature-samples) and a reference model, side by side in one run (seconds, best of --repeats).

  python bench/validation_cost.py                    # the MNIST and Fashion-MNIST CNN samples
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import onnx_damp

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = {"mnist": ([3], "retrained_without_3.onnx"), "fashion_mnist": ([0], "retrained_without_0.onnx")}


def timed(**kw) -> float:
    t0 = time.perf_counter()
    onnx_damp.forget(quiet=True, **kw)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", nargs="*", default=list(SAMPLES))
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    print("| sample | no --eval-data, --feature-samples 0 | + --eval-data | + --feature-samples 500 (default) "
          "| + --reference |")
    print("|---|---|---|---|---|")
    for s in args.samples:
        folder = ROOT / "samples" / s
        forget, ref = SAMPLES[s]
        base = dict(model=folder / "model.onnx", data=folder / "calib.npz", forget=forget)
        cases = [dict(feature_samples=0), dict(eval_data=folder / "test.npz", feature_samples=0),
                 dict(eval_data=folder / "test.npz"), dict(eval_data=folder / "test.npz", reference=folder / ref)]
        t = [min(timed(**base, **c) for _ in range(args.repeats)) for c in cases]
        print(f"| {s} | {t[0]:.1f} s | {t[1]:.1f} s | {t[2]:.1f} s | {t[3]:.1f} s |", flush=True)


if __name__ == "__main__":
    main()
