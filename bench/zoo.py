"""Forgetting quality on every zoo model (trained and exported by others) and every shipped sample.

For each model: every single class and three pairs of similar classes, one edit at a time, with the same
pipeline `onnx-damp forget` runs (held-out split of the calibration images, candidate plans, readout
stage); forget accuracy before/after, mean retain drop, worst retain class and time per edit, all on the
model's full test data (never seen by the edit). Bounds: forget accuracy <= 1%, mean retain drop <= 1
point, no retain class down more than 3 points.

  python zoo/prepare.py --out /tmp/zoo                       # the zoo's data (about a minute)
  python bench/zoo.py --zoo-data /tmp/zoo                     # every model: docs/zoo.md, docs/zoo.json
  python bench/zoo.py --zoo-data /tmp/zoo --no-readout        # DAMP's representation edit alone (ablation)
  python bench/zoo.py --models mnist cifar10_winml --json out.json --md out.md
  python bench/zoo.py --models --extra mine=model.onnx,calib.npz,test.npz   # any other model, same table

Pairs for --extra models are the three pairs of the data set named by a fourth field (mnist, fashion,
cifar10), or none.

Statistics of the fit part are collected once per model (second moments of every class) and reused for each
forget set; the held-out split is per class, so it is the same for every forget set.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from onnx_damp.data.dataset import Dataset, load_npz, subset
from onnx_damp.data.sources import as_dataset
from onnx_damp.data.labels import metadata_names
from onnx_damp.ops.graph import scan_graph
from onnx_damp.verify.metrics import summarize
from onnx_damp.runtime.modelio import load_model
from onnx_damp.runtime.predict import predict
from onnx_damp.method.selection import split_holdout
from onnx_damp.stats.collector import collect
from onnx_damp.method.pipeline import damp_edit
from onnx_damp.options import MethodOptions

ROOT = Path(__file__).resolve().parent.parent
ZOO = json.loads((ROOT / "zoo" / "zoo.json").read_text())["models"]
SAMPLES = {"mnist": "mnist", "fashion_mnist": "fashion", "vit_mnist": "mnist", "vit_fashion": "fashion",
           "resnet18_fashion": "fashion", "cifar10": "cifar10"}
PAIRS = {"mnist": [(3, 5), (4, 9), (1, 7)], "fashion": [(0, 6), (2, 4), (5, 7)], "cifar10": [(3, 5), (0, 8), (1, 9)]}
BOUNDS = {"forget": 0.01, "mean_drop": 0.01, "class_drop": 0.03}


def model_files(name: str, zoo_data: Path | None) -> tuple[Path, Path, Path, str] | None:
    """(model, calib, test, data set) of a zoo model or a shipped sample, or None when its data are missing."""
    if name in ZOO:
        if zoo_data is None or not (zoo_data / name / "calib.npz").exists():
            return None
        return ROOT / "zoo" / ZOO[name]["file"], zoo_data / name / "calib.npz", zoo_data / name / "test.npz", \
            ZOO[name]["dataset"]
    folder = ROOT / "samples" / name
    if not (folder / "model.onnx").exists():
        return None
    if (folder / "calib").is_dir():  # an image-folder sample (cifar10): JPEG files and a preprocess.json
        return folder / "model.onnx", folder / "calib", folder / "test", SAMPLES[name]
    return folder / "model.onnx", folder / "calib.npz", folder / "test.npz", SAMPLES[name]


def extra_files(spec: str) -> tuple[str, tuple[Path, Path, Path, str | None]]:
    """NAME=MODEL,CALIB,TEST[,DATASET] -> (name, files) for a model outside the zoo and the samples."""
    name, sep, rest = spec.partition("=")
    parts = rest.split(",")
    if not sep or len(parts) not in (3, 4):
        raise SystemExit(f"--extra {spec!r}: expected NAME=MODEL,CALIB,TEST[,DATASET]")
    return name, (Path(parts[0]), Path(parts[1]), Path(parts[2]), parts[3] if len(parts) == 4 else None)


def load_data(path: Path, proto) -> "Dataset":
    """An .npz, or an image folder with the preprocess.json beside it (read in memory once: it is reused)."""
    if path.suffix == ".npz":
        return load_npz(path)
    ds = as_dataset(path, path.parent / "preprocess.json", metadata_names(proto))
    return Dataset(np.asarray(ds.x[:]), ds.y, ds.source)


def run_model(name: str, files, args) -> list[dict]:
    model_path, calib_path, test_path, dataset = files
    proto = load_model(model_path)
    calib, test = load_data(calib_path, proto), load_data(test_path, proto)
    ops = scan_graph(proto).editable
    classes = [int(c) for c in np.unique(calib.y)]
    fsets = [(c,) for c in classes] + ([] if args.no_pairs or dataset not in PAIRS else PAIRS[dataset])
    t0 = time.perf_counter()
    fit_idx, _ = split_holdout(calib.y, args.holdout)
    stats = collect(proto, ops, subset(calib, fit_idx), None)
    t_stats = time.perf_counter() - t0
    base = predict(proto, test).argmax(1)
    rows = []
    for fset in fsets:
        f, retain = list(fset), [c for c in classes if c not in fset]
        t0 = time.perf_counter()
        opts = MethodOptions(readout=not args.no_readout, holdout=args.holdout, candidates=not args.no_candidates,
                             max_passes=args.max_passes)
        out = damp_edit(proto, ops, calib, f, retain, opts, first_stats=stats, outputs=False)
        t_edit = time.perf_counter() - t0
        pred = predict(out.model, test).argmax(1)
        before, after = summarize(base, test.y, f), summarize(pred, test.y, f)
        rep = after.forget_accuracy
        if out.readout is not None and out.readout.applied:
            idx = np.flatnonzero(np.isin(test.y, f))
            rep = float(np.mean(predict(out.representation, test, indices=idx).argmax(1) == test.y[idx]))
        drops = {c: before.per_class[c] - after.per_class[c] for c in retain}
        worst = max(drops, key=drops.get)
        row = {"model": name, "forget": f, "forget_before": before.forget_accuracy, "forget_after": after.forget_accuracy,
               "forget_representation": rep, "retain_before": before.retain_accuracy,
               "retain_after": after.retain_accuracy, "mean_drop": before.retain_accuracy - after.retain_accuracy,
               "worst_class": worst, "worst_drop": drops[worst], "candidate": out.passes[-1].candidate,
               "passes": len(out.passes), "readout": bool(out.readout and out.readout.applied),
               "readout_reason": out.readout.reason if out.readout else "off",
               "seconds": t_edit + t_stats / len(fsets)}
        row["command"] = f"python bench/zoo.py {' '.join(args.argv)}"
        row["date"] = time.strftime("%Y-%m-%d")
        row["within"] = (row["forget_after"] <= BOUNDS["forget"] and row["mean_drop"] <= BOUNDS["mean_drop"]
                         and row["worst_drop"] <= BOUNDS["class_drop"])
        rows.append(row)
        if not args.quiet:
            print(f"{name} forget {f}: {100 * row['forget_before']:.1f}% -> {100 * row['forget_after']:.2f}% "
                  f"(representation {100 * rep:.1f}%), mean retain drop {100 * row['mean_drop']:+.2f}, worst class "
                  f"{worst} {100 * drops[worst]:+.2f} pts, {row['candidate']}, {row['seconds']:.1f} s",
                  file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[dict], args) -> str:
    n, k = len(rows), sum(r["within"] for r in rows)
    commands = sorted({r.get("command", "") for r in rows}) or [f"python bench/zoo.py {' '.join(args.argv)}"]
    out = ["# Forgetting on the zoo and the shipped samples\n",
           f"**{k} of {n} forget sets within bounds** (forget accuracy <= 1%, mean retain drop <= 1 point, no retain "
           f"class down more than 3 points; full test sets of the zoo, the samples' test subsets; CIFAR-10 numbers "
           f"are on the CIFAR-10 (JPEG copy)). Measured with " + "; ".join(f"`{c}`" for c in commands) + ".\n",
           "| model | forget | forget acc. before -> after (representation alone) | mean retain drop | worst retain class "
           "| kept plan | s | within |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['model']} | {'+'.join(map(str, r['forget']))} | {100 * r['forget_before']:.1f}% -> "
                   f"{100 * r['forget_after']:.2f}% ({100 * r['forget_representation']:.1f}%) | "
                   f"{100 * r['mean_drop']:+.2f} pts | {r['worst_class']}: {100 * r['worst_drop']:+.2f} pts | "
                   f"{r['candidate']}{'' if r['readout'] else ' (no readout: ' + r['readout_reason'] + ')'} | "
                   f"{r['seconds']:.1f} | {'yes' if r['within'] else '**no**'} |")
    per = {}
    for r in rows:
        per.setdefault(r["model"], []).append(r["within"])
    out.append("\nPer model: " + ", ".join(f"{m} {sum(v)}/{len(v)}" for m, v in per.items()) + ".")
    out.append("Drops are original minus edited accuracy (positive = the edit lost accuracy).\n")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo-data", type=Path, help="folder written by zoo/prepare.py (zoo models are skipped without)")
    ap.add_argument("--models", nargs="*", default=None, help=f"default: {list(ZOO) + list(SAMPLES)}")
    ap.add_argument("--extra", nargs="*", default=[], metavar="NAME=MODEL,CALIB,TEST[,DATASET]",
                    help="models outside the zoo and the samples (third-party models), measured the same way")
    ap.add_argument("--no-readout", action="store_true")
    ap.add_argument("--no-candidates", action="store_true", help="the default plan only (no held-out choice)")
    ap.add_argument("--holdout", type=float, default=0.2)
    ap.add_argument("--max-passes", type=int, default=1)
    ap.add_argument("--no-pairs", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--md", type=Path, default=None)
    ap.add_argument("-q", "--quiet", action="store_true")
    ap.add_argument("--from-json", type=Path, nargs="*", default=None,
                    help="render the table from the rows of earlier runs (each row keeps its command)")
    args = ap.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    rows = []
    if args.from_json:
        for path in args.from_json:
            rows += json.loads(path.read_text())
        args.models = []
    for name in (args.models if args.models is not None else (list(ZOO) + list(SAMPLES))):
        files = model_files(name, args.zoo_data)
        if files is None:
            print(f"{name}: skipped (no data; see zoo/prepare.py)", file=sys.stderr)
            continue
        rows += run_model(name, files, args)
    for spec in args.extra:
        name, files = extra_files(spec)
        rows += run_model(name, files, args)
    print(markdown(rows, args))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    if args.md:
        args.md.write_text(markdown(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
