"""Is it really forgotten? Original, head suppression, DAMP and the retrained model side by side.

For every shipped sample with a retrained reference (mnist without 3, fashion_mnist without 0,
vit_mnist without 7, vit_fashion without 6, resnet18_fashion without 0) this builds a head-suppression baseline (the forget logit's bias in the final
Gemm lowered by 100: the class disappears from the outputs while every layer still encodes it), runs
`onnx_damp.forget` with the shipped defaults, and scores all four models with `onnx_damp.evaluate`
against the original (held-out test data; calibration data as the attacks' training members).

  python bench/proof.py                 # all five samples
  python bench/proof.py --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import onnx_damp  # noqa: E402
from onnx_damp.ops.graph import scan_graph  # noqa: E402

SAMPLES = {"mnist": [3], "fashion_mnist": [0], "vit_mnist": [7], "vit_fashion": [6], "resnet18_fashion": [0],
           "cifar10": [3]}


def data(folder: Path, split: str) -> tuple[Path, Path | None]:
    """The sample's .npz, or its image folder (cifar10) with the preprocess.json beside it."""
    if (folder / split).is_dir():
        return folder / split, folder / "preprocess.json"
    return folder / f"{split}.npz", None


def head_suppression(model: onnx.ModelProto, forget: list[int], shift: float = 100.0) -> onnx.ModelProto:
    """Lower the forget classes' bias in the last editable Gemm by shift (a baseline, not a product feature)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    head = scan_graph(out).editable[-1]
    node = out.graph.node[head.node_index]
    if head.op_type != "Gemm" or len(node.input) < 3:
        raise SystemExit(f"the last editable operator {head.node_name} is not a Gemm with a bias")
    for t in out.graph.initializer:
        if t.name == node.input[2]:
            b = numpy_helper.to_array(t).copy()
            b[forget] -= shift
            t.CopyFrom(numpy_helper.from_array(b, t.name))
    return out


def row(name: str, method: str, ev) -> dict:
    d = ev.to_dict()
    v = d["verification"]
    mia = v["mia"]["model"] if v["mia"]["available"] else {}
    deep = v["layers"][-1] if v["layers"] else {}
    return {"sample": name, "method": method, "forget_acc": d["model"]["forget_accuracy"],
            "retain_acc": d["model"]["retain_accuracy"],
            "worst_retain_class": d["worst_retain_drop"]["class"], "worst_retain_drop": d["worst_retain_drop"]["drop"],
            "selectivity": v["selectivity"]["selectivity"] if v["selectivity"] else None,
            "forget_distance_ratio_head_input": deep.get("forget_distance", {}).get("ratio"),
            "mia_entropy": mia.get("entropy", {}).get("member_rate"),
            "mia_confidence": mia.get("confidence", {}).get("member_rate"),
            "js_forget": d["reference_js"]["model"]["forget"], "js_retain": d["reference_js"]["model"]["retain"],
            "cka_head_input": deep.get("cka_to_reference", {}).get("model"),
            "cka_gain": v["cka_gain"]["value"], "bias_share": v["bias_shift"].get("bias_share")}


def run_sample(name: str, forget: list[int], tmp: Path, feature_samples: int, extra_bar: str = "energy") -> list[dict]:
    folder = ROOT / "samples" / name
    orig = onnx.load(str(folder / "model.onnx"))
    ref = folder / f"retrained_without_{'_'.join(map(str, forget))}.onnx"
    supp = tmp / f"{name}_suppressed.onnx"
    onnx.save(head_suppression(orig, forget), str(supp))
    damp = tmp / f"{name}_damp.onnx"
    (calib, pre), (test, _) = data(folder, "calib"), data(folder, "test")
    onnx_damp.forget(folder / "model.onnx", calib, forget, output=damp, feature_samples=0, preprocess=pre,
                     extra_bar=extra_bar)
    rows = []
    for method, path in [("original", folder / "model.onnx"), ("head suppression", supp), ("DAMP", damp),
                         ("retrained", ref)]:
        ev = onnx_damp.evaluate(path, test, forget, original=folder / "model.onnx", reference=ref,
                                train_data=calib, feature_samples=feature_samples, preprocess=pre)
        rows.append(row(name, method, ev))
    return rows


def fmt(v, pct=False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def _worst(r: dict) -> str:
    return "-" if r["worst_retain_class"] is None or r["method"] == "original" else f"{r['worst_retain_class']} ({100 * r['worst_retain_drop']:+.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", nargs="*", default=[s for s in SAMPLES if s != "cifar10"],
                    help="default: the five Fashion-MNIST/MNIST samples; cifar10 (CIFAR-10 (JPEG copy)) on request")
    ap.add_argument("--feature-samples", type=int, default=500)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--extra-bar", choices=["energy", "variance"], default="energy",
                    help="ablation: the bar DAMP's extra directions must reach (see projection.extend_subspace)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in args.samples:
            rows += run_sample(s, SAMPLES[s], Path(tmp), args.feature_samples, args.extra_bar)
    print("| sample (forget) | model | forget acc | retain acc | worst retain class (drop pts) | selectivity "
          "| MIA entropy / confidence (forget-train judged members) "
          "| JS to retrained: forget / retain | CKA to retrained, head input | CKA gain (deepest quarter) "
          "| forget Delta at head input (ratio to original) | bias share |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sample']} ({','.join(map(str, SAMPLES[r['sample']]))}) | {r['method']} | {fmt(r['forget_acc'], 1)} "
              f"| {fmt(r['retain_acc'], 1)} | {_worst(r)} | {fmt(r['selectivity'])} | {fmt(r['mia_entropy'], 1)} / {fmt(r['mia_confidence'], 1)} "
              f"| {fmt(r['js_forget'])} / {fmt(r['js_retain'])} | {fmt(r['cka_head_input'])} | {fmt(r['cka_gain'])} "
              f"| {fmt(r['forget_distance_ratio_head_input'])} | {fmt(r['bias_share'])} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=lambda o: float(o) if isinstance(o, np.floating) else str(o)))


if __name__ == "__main__":
    main()
