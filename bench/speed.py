"""Cost of onnx_damp.forget on the shipped samples, relative to plain inference.

(a) time: onnx_damp.forget end to end (no eval data, feature_samples=0; max_passes=1 and the default 3)
    divided by one plain onnxruntime inference pass over the same calibration data at the same batch size
    (128, forget's collection batch size), with a breakdown composed from the same public functions:
    statistics collection (collect, float32 in-graph reductions, with the original's outputs), planning
    (damp.plan), apply (damp.apply), the stopping rule's prediction (the edited model on the forget-class
    calibration samples), the rest of the edited model's calibration prediction (for validation), and the
    statistics with float64 in-graph reductions (the earlier default) for comparison;
(b) peak memory: max RSS (resource.getrusage, in a fresh subprocess per run) of forget with 1x, 4x, 16x the
    calibration samples (calib tiled), next to a subprocess that only runs one plain inference pass over the
    same tiled data;
(c) quality versus calibration samples per class (8 ... 256) on mnist (forget 3) and fashion_mnist (forget 0);
(d) peak memory as (b), but the calibration data streamed from a PNG folder (DIR/<class>/*.png, written from
    calib.npz tiled 1x, 4x, 16x; needs Pillow): nothing of the data set is held whole, so the whole process
    should stay flat, not only its excess over inference.

  python bench/speed.py                                 # (a) and (b) on mnist, (c)
  python bench/speed.py --samples mnist vit_mnist --parts a b --repeats 3 --json speed.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FORGET = {"mnist": 3, "fashion_mnist": 0, "vit_mnist": 7, "vit_fashion": 6, "resnet18_fashion": 0}

CHILD = r"""
import resource, sys, time, json
import numpy as np
sample, factor, mode, forget = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
d = np.load(f"{sys.argv[5]}/{sample}/calib.npz")
x, y = np.tile(d["x"], (factor,) + (1,) * (d["x"].ndim - 1)), np.tile(d["y"], factor)
import onnx_damp
from onnx_damp.data.dataset import Dataset
from onnx_damp.runtime.modelio import load_model
from onnx_damp.runtime.predict import predict
t0 = time.perf_counter()
if mode == "forget":
    onnx_damp.forget(f"{sys.argv[5]}/{sample}/model.onnx", (x, y), forget=[forget], feature_samples=0)
else:
    predict(load_model(f"{sys.argv[5]}/{sample}/model.onnx"), Dataset(x, y, "tiled"), 128)
print(json.dumps({"max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - t0, "samples": int(len(y)),
                  "data_mb": x.nbytes / 2**20}))
"""


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def part_a(sample: str, samples_dir: Path, repeats: int) -> dict:
    import onnx

    import onnx_damp
    from onnx_damp.method import plan as dm
    from onnx_damp.data.dataset import load_npz
    from onnx_damp.ops.graph import scan_graph
    from onnx_damp.runtime.modelio import load_model
    from onnx_damp.runtime.predict import predict
    from onnx_damp.runtime.session import make_session
    from onnx_damp.stats.collector import collect

    folder = samples_dir / sample
    proto = load_model(folder / "model.onnx")
    calib = load_npz(folder / "calib.npz")
    f = [FORGET[sample]]
    retain = [c for c in np.unique(calib.y).tolist() if c not in f]
    ops = scan_graph(proto).editable
    predict(proto, calib, 128)  # warm-up
    t_inf = best(lambda: predict(proto, calib, 128), repeats)
    res = {"sample": sample, "forget": f, "calibration_samples": len(calib), "inference_seconds": t_inf}
    for passes in (1, 3):
        out = {}
        t = best(lambda: out.setdefault("r", onnx_damp.forget(proto, calib, forget=f, feature_samples=0,
                                                               max_passes=passes)), repeats)
        res[f"forget_seconds_max_passes_{passes}"] = t
        res[f"passes_used_max_passes_{passes}"] = len(out["r"].passes)
    # breakdown of one pass, from the same functions damp_edit calls
    fidx = np.flatnonzero(np.isin(calib.y, f))
    rest = np.setdiff1d(np.arange(len(calib)), fidx)
    t0 = time.perf_counter()
    stats = collect(proto, ops, calib, f, outputs=True)
    t1 = time.perf_counter()
    plans = dm.plan(ops, stats, f, retain)
    t2 = time.perf_counter()
    edited = onnx.ModelProto()
    edited.CopyFrom(proto)
    dm.apply(edited, plans)
    t3 = time.perf_counter()
    sess = make_session(edited)
    predict(edited, calib, 256, indices=fidx, session=sess)
    t4 = time.perf_counter()
    predict(edited, calib, 256, indices=rest, session=sess)
    t5 = time.perf_counter()
    collect(proto, ops, calib, f, precision="float64")
    t6 = time.perf_counter()
    res["breakdown_seconds"] = {"statistics": t1 - t0, "plan": t2 - t1, "apply": t3 - t2,
                                "stopping_rule_prediction": t4 - t3, "rest_of_validation_prediction": t5 - t4,
                                "statistics_float64": t6 - t5}
    return res


def part_b(sample: str, samples_dir: Path, factors: list[int]) -> list[dict]:
    rows = []
    for mode in ("inference", "forget"):
        for k in factors:
            out = subprocess.run([sys.executable, "-c", CHILD, sample, str(k), mode, str(FORGET[sample]),
                                  str(samples_dir)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"sample": sample, "mode": mode, "factor": k, **r})
            print(f"  (b) {sample} {mode} x{k}: {r['max_rss_mb']:.0f} MB in {r['seconds']:.1f}s", file=sys.stderr)
    return rows


CHILD_FOLDER = r"""
import resource, sys, time, json
import onnx_damp
folder, model, forget = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
res = onnx_damp.forget(model, folder, forget=[forget], feature_samples=0, preprocess={"mode": "L"})
print(json.dumps({"max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - t0, "samples": res.calibration_samples}))
"""


def write_png_folder(folder: Path, x: np.ndarray, y: np.ndarray, factor: int) -> None:
    """calib.npz ([0, 1] floats, one channel) as 8-bit PNGs, each image written factor times."""
    from PIL import Image

    u8 = np.clip(np.rint(x[:, 0] * 255.0), 0, 255).astype(np.uint8)
    for c in np.unique(y):
        (folder / str(int(c))).mkdir(parents=True, exist_ok=True)
    for i, (img, c) in enumerate(zip(u8, y)):
        for k in range(factor):
            Image.fromarray(img, mode="L").save(folder / str(int(c)) / f"{i:05d}_{k:02d}.png")


def part_d(sample: str, samples_dir: Path, factors: list[int]) -> list[dict]:
    import tempfile

    d = np.load(samples_dir / sample / "calib.npz", allow_pickle=False)
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnx-damp-bench-") as tmp:
        for k in factors:
            folder = Path(tmp) / f"x{k}"
            write_png_folder(folder, d["x"], d["y"], k)
            out = subprocess.run([sys.executable, "-c", CHILD_FOLDER, str(folder), str(samples_dir / sample / "model.onnx"),
                                  str(FORGET[sample])], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"sample": sample, "factor": k, **r})
            print(f"  (d) {sample} folder x{k}: {r['max_rss_mb']:.0f} MB in {r['seconds']:.1f}s", file=sys.stderr)
    return rows


def part_c(samples_dir: Path, sizes: list[int]) -> list[dict]:
    from onnx_damp.data.dataset import Dataset, load_npz
    from onnx_damp.ops.graph import scan_graph
    from onnx_damp.verify.metrics import js_divergence, summarize, to_probabilities
    from onnx_damp.runtime.modelio import load_model
    from onnx_damp.runtime.predict import predict
    from onnx_damp.method.pipeline import damp_edit

    rows = []
    for sample in ("mnist", "fashion_mnist"):
        folder = samples_dir / sample
        proto = load_model(folder / "model.onnx")
        calib, test = load_npz(folder / "calib.npz"), load_npz(folder / "test.npz")
        ops = scan_graph(proto).editable
        f = [FORGET[sample]]
        classes = np.unique(calib.y).tolist()
        retain = [c for c in classes if c not in f]
        base = summarize(predict(proto, test).argmax(1), test.y, f)
        ref = to_probabilities(predict(load_model(folder / f"retrained_without_{f[0]}.onnx"), test))
        fm = np.isin(test.y, f)
        rng = np.random.default_rng(0)
        for n in sizes:
            idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(calib.y == c), size=min(n, int(np.sum(calib.y == c))),
                                                     replace=False) for c in classes]))
            sub = Dataset(calib.x[idx], calib.y[idx], f"{n} per class")
            t0 = time.perf_counter()
            out = damp_edit(proto, ops, sub, f, retain)
            t = time.perf_counter() - t0
            z = predict(out.model, test)
            s = summarize(z.argmax(1), test.y, f)
            drops = {c: base.per_class[c] - s.per_class[c] for c in retain}
            rows.append({"sample": sample, "forget": f, "per_class": n, "forget_acc": s.forget_accuracy,
                         "retain_acc": s.retain_accuracy, "worst_drop": max(drops.values()),
                         "js_forget": float(np.mean(js_divergence(to_probabilities(z[fm]), ref[fm]))),
                         "passes": len(out.passes), "seconds": t})
            print(f"  (c) {sample} n={n}: forget {100 * s.forget_accuracy:.2f}%", file=sys.stderr)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", nargs="*", default=["mnist"], help="samples for (a) and (b)")
    ap.add_argument("--parts", nargs="*", default=["a", "b", "c"], choices=["a", "b", "c", "d"])
    ap.add_argument("--repeats", type=int, default=3, help="(a): best of this many runs")
    ap.add_argument("--factors", nargs="*", type=int, default=[1, 4, 16])
    ap.add_argument("--sizes", nargs="*", type=int, default=[8, 16, 32, 64, 128, 256])
    ap.add_argument("--samples-dir", type=Path, default=ROOT / "samples")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out: dict = {}
    if "a" in args.parts:
        out["a"] = [part_a(s, args.samples_dir, args.repeats) for s in args.samples]
        print("## (a) time relative to one plain inference pass over the calibration data (batch 128)\n")
        print("| sample | calib samples | inference pass (s) | forget, max_passes=1 (s, x inference) "
              "| forget, default (s, x inference, passes) | statistics (s, x inference) | plan (s) | apply (s) "
              "| stopping-rule prediction (s) | rest of validation prediction (s) | other (s) "
              "| float64 statistics (s, x inference) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in out["a"]:
            b, ti = r["breakdown_seconds"], r["inference_seconds"]
            f1, f3 = r["forget_seconds_max_passes_1"], r["forget_seconds_max_passes_3"]
            parts = ("statistics", "plan", "apply", "stopping_rule_prediction", "rest_of_validation_prediction")
            other = f1 - sum(b[k] for k in parts)
            print(f"| {r['sample']} (forget {r['forget'][0]}) | {r['calibration_samples']} | {ti:.3f} | {f1:.2f} ({f1 / ti:.1f}x) "
                  f"| {f3:.2f} ({f3 / ti:.1f}x, {r['passes_used_max_passes_3']}) "
                  f"| {b['statistics']:.2f} ({b['statistics'] / ti:.1f}x) "
                  f"| {b['plan']:.3f} | {b['apply']:.3f} | {b['stopping_rule_prediction']:.3f} "
                  f"| {b['rest_of_validation_prediction']:.3f} | {other:.3f} "
                  f"| {b['statistics_float64']:.2f} ({b['statistics_float64'] / ti:.1f}x) |")
        print()
    if "b" in args.parts:
        out["b"] = [r for s in args.samples for r in part_b(s, args.samples_dir, args.factors)]
        print("## (b) peak RSS, fresh subprocess per run (forget: feature_samples=0, default passes)\n")
        print("| sample | calib x | samples | data (MB) | inference-only max RSS (MB) | forget max RSS (MB) "
              "| forget RSS / 1x forget RSS | forget - inference (MB) | forget time (s) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for s in args.samples:
            inf = {r["factor"]: r for r in out["b"] if r["sample"] == s and r["mode"] == "inference"}
            fg = {r["factor"]: r for r in out["b"] if r["sample"] == s and r["mode"] == "forget"}
            one = fg[args.factors[0]]["max_rss_mb"]
            for k in args.factors:
                print(f"| {s} | {k} | {fg[k]['samples']} | {fg[k]['data_mb']:.0f} | {inf[k]['max_rss_mb']:.0f} "
                      f"| {fg[k]['max_rss_mb']:.0f} | {fg[k]['max_rss_mb'] / one:.2f} "
                      f"| {fg[k]['max_rss_mb'] - inf[k]['max_rss_mb']:.0f} | {fg[k]['seconds']:.1f} |")
        print()
    if "c" in args.parts:
        out["c"] = part_c(args.samples_dir, args.sizes)
        print("## (c) quality versus calibration samples per class (test data)\n")
        print("| sample | forget | per class | forget acc | retain acc | worst retain-class drop (pts) "
              "| JS to retrained, forget | passes | edit time (s) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in out["c"]:
            print(f"| {r['sample']} | {r['forget'][0]} | {r['per_class']} | {100 * r['forget_acc']:.2f}% "
                  f"| {100 * r['retain_acc']:.2f}% | {100 * r['worst_drop']:+.2f} | {r['js_forget']:.3f} "
                  f"| {r['passes']} | {r['seconds']:.2f} |")
    if "d" in args.parts:
        out["d"] = [r for s in args.samples for r in part_d(s, args.samples_dir, args.factors)]
        print("## (d) peak RSS with the calibration data streamed from a PNG folder (forget, default passes)\n")
        print("| sample | calib x | samples | forget max RSS (MB) | RSS / 1x RSS | forget time (s) |")
        print("|---|---|---|---|---|---|")
        for s in args.samples:
            rows = {r["factor"]: r for r in out["d"] if r["sample"] == s}
            one = rows[args.factors[0]]["max_rss_mb"]
            for k in args.factors:
                print(f"| {s} | {k} | {rows[k]['samples']} | {rows[k]['max_rss_mb']:.0f} "
                      f"| {rows[k]['max_rss_mb'] / one:.2f} | {rows[k]['seconds']:.1f} |")
        print()
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
