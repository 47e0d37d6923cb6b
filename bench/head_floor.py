"""How far can DAMP's edit form go at the classifier head? A floor for forget accuracy.

DAMP edits the head as `W <- W (I - alpha Q Q^T)` with every column of `Q` orthogonal to the retain
prototypes (so `W' mu_r = W mu_r`). The strongest edit of that form is `alpha = 1` and `Q` = the whole
orthogonal complement of the retain prototypes' span, i.e. `W <- W P_R` (`P_R`: projector onto the span of
the retain prototypes of the head's input). Whatever forget accuracy remains after it comes from forget
images whose head-input features already lie in the retain span in a way the head reads as the forget class;
no choice of rank or alpha at the head can remove it, only edits of earlier layers can move those features.

For each forget set this prints held-out test forget/retain accuracy of: the original, the original with the
head projected (`W P_R`), the shipped DAMP edit, and the DAMP-edited model with its head projected.
Retain prototypes come from the calibration data, exactly as `forget` computes them.

  python bench/head_floor.py --samples fashion_mnist
  python bench/head_floor.py --samples fashion_mnist vit_mnist --json bench/results/head_floor.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import onnx_damp  # noqa: E402
from onnx_damp.method import plan as damp  # noqa: E402
from onnx_damp.stats import collector as stats
from onnx_damp.data.dataset import load_npz  # noqa: E402
from onnx_damp.ops.graph import scan_graph  # noqa: E402
from onnx_damp.verify.metrics import summarize  # noqa: E402
from onnx_damp.runtime.predict import predict  # noqa: E402

SAMPLES = ["mnist", "fashion_mnist", "vit_mnist", "vit_fashion", "resnet18_fashion"]


def complement_basis(mu_r: np.ndarray, tol: float = 1e-10) -> np.ndarray:
    """Orthonormal basis (d, d - rank) of the orthogonal complement of the columns of mu_r."""
    u, s, _ = np.linalg.svd(mu_r, full_matrices=True)
    rank = int((s > tol * max(s.max(), 1e-300)).sum())
    return u[:, rank:]


def project_head(model: onnx.ModelProto, calib, forget: list[int], retain: list[int]) -> onnx.ModelProto:
    """The model with its last editable operator's weight replaced by W P_R (retain prototypes from calib)."""
    head = scan_graph(model).editable[-1]
    st = stats.collect(model, [head], calib, gram_classes=forget, precision="float64")
    mu_r = np.stack([st.layers[head.node_name].mean(c) for c in retain], axis=1)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    damp.apply(out, [damp.LayerPlan(head, complement_basis(mu_r), 1.0, 0.0, 0.0)])
    return out


def scores(model: onnx.ModelProto, test, forget: list[int], original=None) -> dict:
    """(row, summary): held-out forget/retain accuracy, and the worst retain-class drop against original's summary."""
    s = summarize(predict(model, test).argmax(1), test.y, forget)
    row = {"forget_acc": s.forget_accuracy, "retain_acc": s.retain_accuracy}
    if original is not None:
        drops = {c: original.per_class[c] - s.per_class[c] for c in s.per_class if c not in forget}
        row["worst_retain_drop"] = max(drops.values())
    return row, s


def run(sample: str, forget_sets: list[list[int]]) -> list[dict]:
    d = ROOT / "samples" / sample
    model = onnx.load(str(d / "model.onnx"))
    calib, test = load_npz(d / "calib.npz"), load_npz(d / "test.npz")
    rows = []
    for forget in forget_sets:
        t0 = time.perf_counter()
        retain = [c for c in calib.classes if c not in forget]
        edited = onnx_damp.forget(model, calib, forget=forget, quiet=True)
        row = {"sample": sample, "forget": forget, "damp_passes": len(edited.passes)}
        orig_row, orig = scores(model, test, forget)
        for tag, m in [("original", model), ("original_head_projected", project_head(model, calib, forget, retain)),
                       ("damp", edited.model), ("damp_head_projected", project_head(edited.model, calib, forget, retain))]:
            row[tag] = orig_row if tag == "original" else scores(m, test, forget, orig)[0]
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        print(_line(row), flush=True)
    return rows


def _cell(r: dict) -> str:
    worst = f", worst {100 * r['worst_retain_drop']:+.1f}" if "worst_retain_drop" in r else ""
    return f"{100 * r['forget_acc']:5.1f}% / {100 * r['retain_acc']:.2f}%{worst}"


def _line(row: dict) -> str:
    return (f"| {row['sample']} | {','.join(map(str, row['forget']))} | {_cell(row['original'])} | "
            f"{_cell(row['original_head_projected'])} | {_cell(row['damp'])} ({row['damp_passes']} passes) | "
            f"{_cell(row['damp_head_projected'])} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", nargs="+", default=["fashion_mnist"], choices=SAMPLES)
    ap.add_argument("--classes", nargs="+", type=int, default=None, help="single classes (default: all ten)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    print("forget acc / retain acc (held-out test), worst: largest retain-class drop in points against the original")
    print("| sample | forget | original | original, head W P_R | DAMP | DAMP, then head W P_R |")
    print("|---|---|---|---|---|---|")
    rows = []
    for sample in args.samples:
        classes = args.classes if args.classes is not None else list(range(10))
        rows += run(sample, [[c] for c in classes])
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
