"""End to end, as a user runs it: `onnx-damp forget MODEL --data CALIB.npz --forget C -o OUT -q` (no
--eval-data, every other option at its default) against a plain script that loads the same .npz and runs one
onnxruntime inference pass over it at the same batch size (numpy and onnxruntime only; a batch fixed by the
model is fed at that size, as such a script would), both as fresh processes, side by side in one run
(issue 14's target: at most 1.5x). A second, non-quiet run of forget gives the per-phase breakdown from its
progress lines ("rest": that run's time outside them: imports, loading and checking the inputs, the
validation table). Last, the start-up alone: a fresh interpreter importing what each side loads before any
work (numpy and onnxruntime; onnx, click and the package besides), the part of every row's gap that no change
to the method removes.

  python bench/process_ratio.py --zoo-data /tmp/zoo            # samples and zoo models
  python bench/process_ratio.py --models mnist vit_mnist       # a subset
  python bench/process_ratio.py --models mnist --times 8       # the calibration data repeated 8 times
  python bench/process_ratio.py --forget-args="--holdout 0.1"  # a non-default forget (a trade's cost)

The package's bytecode is compiled first (`compileall`, as `pip install` does), so that a shell with
PYTHONDONTWRITEBYTECODE set (this sandbox's) does not charge forget 0.1 s of compiling per run. Plain and
forget runs alternate, so a change of the machine's load hits both.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = {"mnist": 3, "fashion_mnist": 0, "vit_mnist": 7, "vit_fashion": 6, "resnet18_fashion": 0, "cifar10": 3}
FOLDER_SAMPLES = {"cifar10"}  # calibration images as a folder: decoded once (the tool's loader) into an .npz
ZOO = {"mnist_cntk_zoo8": 3, "mnist_burn": 3, "cifar10_mlperftiny_resnet8": 3, "cifar10_winml": 3}
PLAIN = """
import sys, numpy as np, onnxruntime as ort
with np.load(sys.argv[2], allow_pickle=False) as z:
    x = z["x"]
sess = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
inp = sess.get_inputs()[0]
fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
b = fixed or int(sys.argv[3])
dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}[inp.type]
for i in range(0, len(x) - len(x) % b if fixed else len(x), b):
    sess.run(None, {inp.name: x[i:i + b].astype(dtype)})
"""


def timed(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    return time.perf_counter() - t0, r


def paths(name: str, zoo_data: Path | None, tmp: Path) -> tuple[Path, Path] | None:
    if name in FOLDER_SAMPLES:
        return ROOT / "samples" / name / "model.onnx", folder_npz(ROOT / "samples" / name, tmp / f"{name}.npz")
    if name in SAMPLES:
        return ROOT / "samples" / name / "model.onnx", ROOT / "samples" / name / "calib.npz"
    if zoo_data is None or not (zoo_data / name / "calib.npz").exists():
        return None
    return ROOT / "zoo" / "models" / name / "model.onnx", zoo_data / name / "calib.npz"


def folder_npz(sample: Path, out: Path) -> Path:
    """The sample's calib/ image folder decoded with its preprocess.json, as the tool reads it, into out (.npz):
    both sides then load the same arrays (the issue's target compares against a script that loads an .npz)."""
    from onnx_damp.data.sources import as_dataset

    ds = as_dataset(sample / "calib", sample / "preprocess.json",
                    (sample / "labels.txt").read_text().split())
    np.savez(out, x=np.asarray(ds.x[np.arange(len(ds))], dtype=np.float32), y=ds.y)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=list(SAMPLES) + list(ZOO))
    ap.add_argument("--zoo-data", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--times", type=int, default=1, help="repeat the calibration data this many times")
    ap.add_argument("--forget-args", default="", help="more forget options, one string (shlex-split), e.g. "
                    "\"--holdout 0.1\": what a non-default setting costs (the issue's target is the defaults)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "onnx_damp")], check=True)
    rows = []
    print("| model | calib images | plain pass (s) | forget -q (s) | ratio | phases (s) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            found = paths(name, args.zoo_data, Path(tmp))
            if found is None:
                print(f"| {name} | skipped: no data (--zoo-data) | | | | |")
                continue
            model, calib = found
            if args.times > 1:
                with np.load(calib, allow_pickle=False) as z:
                    x, y = z["x"], z["y"]
                calib = Path(tmp) / f"{name}_x{args.times}.npz"
                np.savez(calib, x=np.concatenate([x] * args.times), y=np.concatenate([y] * args.times))
            out = Path(tmp) / f"{name}.onnx"
            forget = [sys.executable, "-m", "onnx_damp.cli", "forget", str(model), "--data", str(calib), "--forget",
                      str(SAMPLES.get(name, ZOO.get(name))), "-o", str(out), "--batch-size", str(args.batch_size),
                      *shlex.split(args.forget_args)]
            plain = [sys.executable, "-c", PLAIN, str(model), str(calib), str(args.batch_size)]
            t_plains, t_forget = [], []
            for _ in range(args.repeats):
                t_plains.append(timed(plain)[0])
                t, r = timed(forget + ["-q"])
                if r.returncode not in (0, 3):
                    raise SystemExit(f"{name}: forget failed ({r.returncode}): {r.stderr[-400:]}")
                t_forget.append(t)
            t_plain = min(t_plains)
            t_phased, r = timed(forget)
            phases = {m.group(1): float(m.group(2)) for m in re.finditer(r"^([a-z ,\d-]+): \d+/\d+ in ([\d.]+)s$",
                                                                          r.stderr, re.M)}
            phases["rest"] = round(max(t_phased - sum(phases.values()), 0.0), 2)  # imports, loading, checks, tables
            with np.load(calib, allow_pickle=False) as z:
                n = len(z["y"])
            row = {"model": name, "calibration_images": n, "plain_s": t_plain, "forget_s": min(t_forget),
                   "ratio": min(t_forget) / t_plain, "phases_s": phases}
            rows.append(row)
            ph = ", ".join(f"{k} {v:.1f}" for k, v in phases.items())
            print(f"| {name} | {n} | {t_plain:.2f} | {min(t_forget):.2f} | {row['ratio']:.2f}x | {ph} |", flush=True)
    startup = import_times(args.repeats)
    print(f"\nstart-up alone (best of {args.repeats}): the plain script's imports {startup['plain_s']:.2f} s, "
          f"forget's {startup['forget_s']:.2f} s (+{startup['forget_s'] - startup['plain_s']:.2f} s on every row)")
    if args.json:
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"),
                                         "rows": rows, "startup": startup}, indent=2))


def import_times(repeats: int) -> dict:
    """Seconds a fresh interpreter takes to import what each side needs before any work: numpy and
    onnxruntime (the plain script) against the modules `onnx-damp forget` loads (onnx, click, the package): the
    part of each row's gap that no change to the method can remove."""
    plain = [sys.executable, "-c", "import numpy, onnxruntime"]
    forget = [sys.executable, "-c", "import onnxruntime, threadpoolctl, onnx_damp.cli, onnx_damp.api, "
                                    "onnx_damp.method.pipeline, onnx_damp.verify.runs, onnx_damp.data.preprocess, "
                                    "onnx_damp.data.npzmap, onnx_damp.report.tables, onnx_damp.runtime.allocator"]
    best = {"plain_s": float("inf"), "forget_s": float("inf")}
    for _ in range(max(repeats, 3)):
        best["plain_s"] = min(best["plain_s"], timed(plain)[0])
        best["forget_s"] = min(best["forget_s"], timed(forget)[0])
    return best


if __name__ == "__main__":
    main()
