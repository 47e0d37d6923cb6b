"""The statistics session against a plain one (issue 14, item 2): per model, the instrumented graph `forget`'s
statistics pass runs (runtime.instrument: float32 reductions, Conv inputs on the position grid) and the model
itself, each in its own onnxruntime session, over the same calibration images at the same batch size,
alternated in one process, best of --repeats. The ratio is what the statistics pass costs per image over a
plain inference pass (session creation and host-side accumulation not included: see bench/process_ratio.py
for the whole run).

  python bench/stats_overhead.py --zoo-data /tmp/zoo                  # samples and zoo models
  python bench/stats_overhead.py --models mnist vit_mnist --repeats 7
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from process_ratio import SAMPLES, ZOO, paths  # noqa: E402

from onnx_damp.ops.graph import scan_graph  # noqa: E402
from onnx_damp.runtime.session import make_session  # noqa: E402
from onnx_damp.stats.collector import statistics_graph  # noqa: E402


def sessions(model: onnx.ModelProto, x: np.ndarray) -> dict:
    """The plain and the statistics session of the graph collect streams (a batch fixed at 1 freed in both, so
    that both run at the same batch size: what a fixed batch costs is bench/fixed_batch.py's)."""
    graph = statistics_graph(model, scan_graph(model).editable, x)
    return {"plain": make_session(graph.model, "cpu"), "statistics": make_session(graph.instrumented, "cpu")}


def timed_pass(sess, x: np.ndarray, batch: int) -> float:
    name = sess.get_inputs()[0].name
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        sess.run(None, {name: x[i:i + batch]})
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=list(SAMPLES) + list(ZOO))
    ap.add_argument("--zoo-data", type=Path, default=None)
    ap.add_argument("--images", type=int, default=2400, help="calibration images run (the first ones)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    rows = []
    tmp = Path(tempfile.mkdtemp())
    print("| model | images | plain session (s) | statistics session (s) | ratio |")
    print("|---|---|---|---|---|")
    for name in args.models:
        found = paths(name, args.zoo_data, tmp)
        if found is None:
            print(f"| {name} | skipped: no --zoo-data | | | |")
            continue
        model_path, calib = found
        with np.load(calib, allow_pickle=False) as z:
            x = z["x"][:args.images].astype(np.float32)
        sess = sessions(onnx.load(str(model_path)), x)
        times = {k: [] for k in sess}
        for _ in range(args.repeats):
            for k, s in sess.items():
                times[k].append(timed_pass(s, x, args.batch_size))
        p, s = min(times["plain"]), min(times["statistics"])
        rows.append({"model": name, "images": len(x), "plain_s": p, "statistics_s": s, "ratio": s / p})
        print(f"| {name} | {len(x)} | {p:.3f} | {s:.3f} | {s / p:.2f}x |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"command": " ".join(["bench/stats_overhead.py"] + sys.argv[1:]),
                                         "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
