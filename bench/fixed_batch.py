"""Fixed-batch models at full speed: `forget` on a model whose batch is fixed at 1 against the same model with a
dynamic batch, side by side in one run (issue 14's target: at most 1.5x).

The dynamic twin is the model with its batch made symbolic (runtime.batching.free_batch), so both edits do
the same arithmetic; the ratio shows what the fixed batch still costs (the check on the first rows, the
rewrite per session).

  python zoo/prepare.py --out /tmp/zoo
  python bench/fixed_batch.py --zoo-data /tmp/zoo                  # the zoo's batch-1 models
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import onnx

import onnx_damp
from onnx_damp.runtime.batching import fixed_batch_of, free_batch
from onnx_damp.runtime.modelio import load_model

ROOT = Path(__file__).resolve().parent.parent
ZOO = json.loads((ROOT / "zoo" / "zoo.json").read_text())["models"]


def timed_forget(model, calib, forget) -> float:
    t0 = time.perf_counter()
    onnx_damp.forget(model, calib, forget, feature_samples=0, quiet=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo-data", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=2, help="best of this many runs each")
    args = ap.parse_args()
    print("| model | batch | forget, fixed batch (s) | forget, dynamic twin (s) | ratio |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, z in ZOO.items():
            path = ROOT / "zoo" / z["file"]
            proto = load_model(path)
            if fixed_batch_of(proto) != 1 or not (args.zoo_data / name / "calib.npz").exists():
                continue
            twin = Path(tmp) / f"{name}_dynamic.onnx"
            onnx.save(free_batch(proto), str(twin))
            calib = args.zoo_data / name / "calib.npz"
            fixed = min(timed_forget(path, calib, [3]) for _ in range(args.repeats))
            dynamic = min(timed_forget(twin, calib, [3]) for _ in range(args.repeats))
            print(f"| {name} | 1 | {fixed:.2f} | {dynamic:.2f} | {fixed / dynamic:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
