"""`onnx-damp forget MODEL --data CALIB --forget C -o OUT -q` with the tool's one-thread BLAS limit
(runtime/blas.py, the default) and without it (OPENBLAS_NUM_THREADS set to the core count, which the tool
leaves alone), on an idle machine and beside busy processes (one pure-Python spinner per core), alternated
in one run; prints wall times and the ratios off/on.

  python bench/busy_machine.py                                   # the MNIST sample and the resnet18 sample
  python bench/busy_machine.py --model M.onnx CALIB.npz 3 --model ...   # any models (path, data, class)
  python bench/busy_machine.py --zoo-data /tmp/zoo               # and cifar10_winml (its 2,400-wide head)
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = [("mnist", ROOT / "samples/mnist/model.onnx", ROOT / "samples/mnist/calib.npz", 3),
           ("resnet18_fashion", ROOT / "samples/resnet18_fashion/model.onnx",
            ROOT / "samples/resnet18_fashion/calib.npz", 0)]


def spin(seconds: float) -> None:
    end = time.time() + seconds
    while time.time() < end:
        pass


def forget_time(model: Path, calib: Path, cls: int, out: Path, env: dict) -> float:
    cmd = [sys.executable, "-m", "onnx_damp.cli", "forget", str(model), "--data", str(calib), "--forget", str(cls),
           "-o", str(out), "-q"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode not in (0, 3):
        raise SystemExit(f"{model}: forget failed ({r.returncode}): {r.stderr[-400:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", nargs=3, action="append", metavar=("MODEL", "CALIB", "CLASS"))
    ap.add_argument("--zoo-data", type=Path)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    models = [(Path(m).parent.name if Path(m).name == "model.onnx" else Path(m).stem, Path(m), Path(c), int(k))
              for m, c, k in args.model] if args.model else list(DEFAULT)
    if args.zoo_data:
        models.append(("cifar10_winml", ROOT / "zoo/models/cifar10_winml/model.onnx",
                       args.zoo_data / "cifar10_winml/calib.npz", 3))
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "onnx_damp")], check=True)
    cores = os.cpu_count() or 2
    base = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                             "MKL_NUM_THREADS", "BLIS_NUM_THREADS")}
    variants = {"limit": base, "no limit": {**base, "OPENBLAS_NUM_THREADS": str(cores)}}
    rows = []
    print(f"| model | machine | BLAS limit 1 (s) | no limit, {cores} threads (s) | ratio |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, calib, cls in models:
            for machine in ("idle", "busy"):
                spinners = []
                if machine == "busy":
                    spinners = [mp.Process(target=spin, args=(24 * 3600,), daemon=True) for _ in range(cores)]
                    for p in spinners:
                        p.start()
                try:
                    times = {v: [] for v in variants}
                    for _ in range(args.repeats):
                        for v, env in variants.items():
                            times[v].append(forget_time(model, calib, cls, Path(tmp) / f"{name}.onnx", env))
                finally:
                    for p in spinners:
                        p.terminate()
                    for p in spinners:
                        p.join()  # gone before the next model's idle runs
                best = {v: min(t) for v, t in times.items()}
                row = {"model": name, "machine": machine, "limit_s": best["limit"], "no_limit_s": best["no limit"],
                       "ratio": best["no limit"] / best["limit"], "all_s": times}
                rows.append(row)
                print(f"| {name} | {machine} | {best['limit']:.2f} | {best['no limit']:.2f} | {row['ratio']:.2f}x |",
                      flush=True)
    if args.json:
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"),
                                         "cores": cores, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
