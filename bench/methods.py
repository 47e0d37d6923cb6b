"""Compare class-unlearning methods on the shipped samples, on the same ONNX model and calibration data.

Methods (every edit starts from the sample's model.onnx and uses only its calib.npz):

- original: the model as shipped;
- retrained: the model retrained without the class (only for the forget set it exists for);
- head_bias: subtract --bias-shift (default 100) from the forget classes' bias in the final Gemm;
- kodge: Kodge, Saha & Roy, "Deep Unlearning: Fast and Efficient Gradient-free Class Forgetting"
  (TMLR 2024). Per editable layer, from the uncentred activation second moments (LayerStats: per-class
  Grams, retain Gram = total - forget Grams): eigenvectors U and eigenvalues s of the retain and forget
  correlation matrices (= left singular vectors / squared singular values of the activation matrices),
  s normalised to sum 1, importance l = a s / ((a - 1) s + 1), M = U diag(l) U^T (a = alpha_r for retain,
  alpha_f for forget), edit W <- W (I - (M_f - M_f M_r)) on the layer's input features;
- damp: DAMP as shipped (damp_edit defaults: class-token / per-position rows, extra directions, <= 3 passes);
- damp_uniform: DAMP's pass-1 subspaces, every layer with the same alpha (mean of DAMP's pass-1 alphas over
  the layers it edits), one pass;
- damp_last: DAMP's pass-1 plan applied to the final editable layer only;
- damp_1pass: DAMP with max_passes=1.
- damp_sequential: one pass, layer by layer in depth order, each layer's prototypes recomputed on the model
  with every shallower layer already edited (one statistics pass per editable layer), against damp_1pass
  whose prototypes all come from the original model;
- damp_patch: DAMP as shipped but Conv statistics over unfolded kernel patches (--features patch: the Conv
  weight edited as [out, in * k * k]) instead of per-position channel vectors (in channels).

Columns: forget / retain accuracy on test.npz, largest single retain-class drop against the original,
membership-inference member rate of the forget-class calibration images (entropy and confidence attacks of
onnx_damp.verification; members: retain-class calibration images, non-members: retain-class test images),
and where a retrained reference exists: mean JS divergence to it on forget- and retain-class test images and
deep CKA to it (mean linear CKA over the deepest quarter of editable layers, on --feature-samples
forget-class test images), and the wall time of the edit (statistics collection excluded: it is done once per
sample with Grams of every class and reported separately; DAMP's further passes re-collect and are included).

  python bench/methods.py                                  # all samples, 10 single classes + 4 pairs
  python bench/methods.py --samples mnist --classes 3      # one forget set
  python bench/methods.py --classes 3 0 7 --pairs 3,5 --json methods.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx

from onnx_damp.method import plan as dm
from onnx_damp.data.dataset import load_npz
from onnx_damp.verify.feature_runs import extract, pick_samples
from onnx_damp.ops.graph import EditableOp, scan_graph
from onnx_damp.verify.metrics import js_divergence, summarize, to_probabilities
from onnx_damp.runtime.modelio import load_model
from onnx_damp.runtime.predict import predict
from onnx_damp.stats.collector import collect
from onnx_damp.stats.statistics import Statistics
from onnx_damp.method.pipeline import damp_edit
from onnx_damp.verify.measures import deepest_layers, linear_cka, match_layers, mia_confidence, mia_entropy
from onnx_damp.ops.registry import matrix_to_weight, weight_matrix
from onnx_damp.ops.weights import (effective_weight, give_own_copy, index_graph, read_initializer, store_weight,
                                   weight_ref, write_initializer)
from onnx_damp.options import MethodOptions

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ["mnist", "fashion_mnist", "vit_mnist", "vit_fashion", "resnet18_fashion"]
PAIRS = ["0,1", "2,7", "3,5", "4,9"]
METHODS = ["original", "retrained", "head_bias", "kodge", "damp", "damp_uniform", "damp_last", "damp_1pass",
           "damp_sequential", "damp_patch"]


def references(folder: Path) -> dict[tuple, Path]:
    refs = {}
    for p in folder.glob("retrained_without_*.onnx"):
        refs[tuple(sorted(int(c) for c in p.stem.replace("retrained_without_", "").split("_")))] = p
    return refs


def copy_model(proto: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    return m


# ------------------------------------------------------------------------------------------- head bias
def head_bias(proto: onnx.ModelProto, ops: list[EditableOp], forget: list[int], shift: float) -> onnx.ModelProto:
    """The original with `shift` subtracted from the forget classes' bias in the final Gemm."""
    last = ops[-1]
    node = proto.graph.node[last.node_index]
    if last.op_type != "Gemm" or len(node.input) < 3:
        raise ValueError(f"the last editable operator {last.node_name} is not a Gemm with a bias")
    m = copy_model(proto)
    b = read_initializer(m, node.input[2]).astype(np.float64)
    b[list(forget)] -= shift
    write_initializer(m, node.input[2], b)
    return m


# ---------------------------------------------------------------------------------------------- Kodge
def importance_projector(gram: np.ndarray, a: float) -> np.ndarray:
    """U diag(a s / ((a - 1) s + 1)) U^T with (s, U) the eigenpairs of gram, s normalised to sum 1."""
    g = 0.5 * (gram + gram.T)
    s, u = np.linalg.eigh(g)
    s = np.maximum(s, 0.0)
    tot = s.sum()
    if tot <= 0:
        return np.zeros_like(g)
    s = s / tot
    lam = a * s / ((a - 1.0) * s + 1.0)
    return (u * lam) @ u.T


def kodge_matrices(ops: list[EditableOp], stats: Statistics, forget: list[int], retain: list[int],
                   alpha_r: float, alpha_f: float) -> dict[str, np.ndarray]:
    """P = I - (M_f - M_f M_r) per layer (acting on the layer's input features: W <- W P)."""
    out = {}
    for op in ops:
        st = stats.layers[op.node_name]
        g_f = sum(st.grams[c] for c in forget)
        g_r = st.total_gram - g_f
        m_f, m_r = importance_projector(g_f, alpha_f), importance_projector(g_r, alpha_r)
        out[op.node_name] = np.eye(m_f.shape[0]) - (m_f - m_f @ m_r)
    return out


def apply_matrices(proto: onnx.ModelProto, ops: list[EditableOp], mats: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of proto with W <- W P for every op (P: [d, d] on input features), in float64.

    Written back like damp.apply: through the weight's chain with store_weight, a shared weight gets its own
    copy. A grouped Conv keeps the diagonal blocks of P (what it can express), as in damp.edit_weight.
    """
    m = copy_model(proto)
    gi = index_graph(m.graph)
    for op in ops:
        p = mats[op.node_name]
        ref = weight_ref(gi, op)
        w = effective_weight(gi, ref)
        w64 = w.astype(np.float64)
        if op.op_type != "Conv" or op.groups == 1:
            new = matrix_to_weight(op, weight_matrix(op, w64) @ p, w64)
        else:
            out_g, in_g = w64.shape[0] // op.groups, w64.shape[1]
            blocks = []
            for g in range(op.groups):
                wg = w64[g * out_g:(g + 1) * out_g]
                pg = p[g * in_g:(g + 1) * in_g, g * in_g:(g + 1) * in_g]
                blocks.append(matrix_to_weight(op, weight_matrix(op, wg) @ pg, wg))
            new = np.concatenate(blocks, axis=0)
        if ref.exclusive:
            store_weight(gi, ref, new)
        else:
            give_own_copy(gi, op, new.astype(w.dtype))
    return m


# ----------------------------------------------------------------------------------------------- DAMP
def damp_variant(proto, ops, calib, forget, retain, stats, which: str) -> tuple[onnx.ModelProto, dict]:
    if which == "damp":
        out = damp_edit(proto, ops, calib, forget, retain, first_stats=stats)
        return out.model, {"passes": len(out.passes), "alphas": [round(p.alpha, 3) for p in out.passes[0].plans]}
    if which == "damp_1pass":
        out = damp_edit(proto, ops, calib, forget, retain, MethodOptions(max_passes=1), first_stats=stats)
        return out.model, {"passes": 1}
    if which == "damp_patch":
        out = damp_edit(proto, ops, calib, forget, retain, MethodOptions(feature_mode="patch"))
        return out.model, {"passes": len(out.passes), "alphas": [round(p.alpha, 3) for p in out.passes[0].plans]}
    if which == "damp_sequential":
        return damp_sequential(proto, ops, calib, forget, retain, stats)
    plans = dm.plan(ops, stats, forget, retain)
    if which == "damp_uniform":
        edited = [p for p in plans if p.rank > 0 and p.alpha > 0]
        a = float(np.mean([p.alpha for p in edited])) if edited else 0.0
        for p in edited:
            p.alpha = a
        info = {"uniform_alpha": round(a, 4)}
    elif which == "damp_last":
        for p in plans[:-1]:
            p.alpha = 0.0
        info = {"last_alpha": round(plans[-1].alpha, 4)}
    else:
        raise ValueError(which)
    m = copy_model(proto)
    dm.apply(m, plans)
    return m, info


def damp_sequential(proto, ops, calib, forget, retain, stats) -> tuple[onnx.ModelProto, dict]:
    """One DAMP pass, layer by layer: layer i's statistics are collected on the model with layers < i edited."""
    m = copy_model(proto)
    alphas = []
    for i, op in enumerate(ops):
        st = stats if i == 0 else collect(m, [op], calib, forget, feature_mode=stats.feature_mode,
                                          layouts=stats.token_layouts)
        p = dm.plan_layer(op, st.layers[op.node_name], forget, retain)
        dm.apply(m, [p])
        alphas.append(round(p.alpha, 3))
    return m, {"passes": 1, "alphas": alphas, "collects": len(ops)}


# -------------------------------------------------------------------------------------------- metrics
def deep_cka(feats_model, feats_ref, n_model: int, n_ref: int) -> float | None:
    match, _ = match_layers(n_model, n_ref)
    vals = [linear_cka(feats_model.layers[i], feats_ref.layers[match[i]]) for i in deepest_layers(n_model)]
    return None if any(v is None for v in vals) else float(np.mean(vals))


class Sample:
    """Everything about one shipped sample that does not depend on the method."""

    def __init__(self, name: str, root: Path, feature_samples: int, mia: bool):
        folder = root / name
        self.name = name
        self.proto = load_model(folder / "model.onnx")
        self.calib, self.test = load_npz(folder / "calib.npz"), load_npz(folder / "test.npz")
        self.ops = scan_graph(self.proto).editable
        self.classes = [int(c) for c in np.unique(self.calib.y)]
        t0 = time.perf_counter()
        self.stats = collect(self.proto, self.ops, self.calib, self.classes)
        self.collect_seconds = time.perf_counter() - t0
        self.base = predict(self.proto, self.test)
        self.mia = mia
        self.feature_samples = feature_samples
        self.refs = {k: load_model(p) for k, p in references(folder).items()}
        self.ref_probs = {k: to_probabilities(predict(p, self.test)) for k, p in self.refs.items()}
        self.ref_feats = {}
        for k, p in self.refs.items():
            idx = pick_samples(self.test.y, list(k), feature_samples)
            self.ref_feats[k] = (idx, extract(p, scan_graph(p).editable, self.test, idx), len(scan_graph(p).editable))

    def evaluate(self, model: onnx.ModelProto, fset: tuple, test_out: np.ndarray | None = None) -> dict:
        f = list(fset)
        retain = [c for c in self.classes if c not in f]
        out = predict(model, self.test) if test_out is None else test_out
        before = summarize(self.base.argmax(1), self.test.y, f)
        after = summarize(out.argmax(1), self.test.y, f)
        drops = {c: before.per_class[c] - after.per_class[c] for c in retain}
        worst = max(drops, key=drops.get)
        row = {"forget_acc": after.forget_accuracy, "retain_acc": after.retain_accuracy,
               "retain_drop": before.retain_accuracy - after.retain_accuracy,
               "worst_class": worst, "worst_drop": drops[worst]}
        probs = to_probabilities(out)
        if self.mia:
            p_tr = to_probabilities(predict(model, self.calib))
            trf = np.isin(self.calib.y, f)
            ter = ~np.isin(self.test.y, f)
            ent = mia_entropy(p_tr[~trf], probs[ter], p_tr[trf])
            conf = mia_confidence(p_tr[~trf], self.calib.y[~trf], probs[ter], self.test.y[ter], p_tr[trf],
                                  self.calib.y[trf])
            row["mia_entropy"], row["mia_confidence"] = ent.member_rate, conf.member_rate
            row["mia_entropy_attack_bacc"] = ent.attack_balanced_accuracy
            row["mia_confidence_attack_bacc"] = conf.attack_balanced_accuracy
        if fset in self.refs:
            ref = self.ref_probs[fset]
            fm = np.isin(self.test.y, f)
            row["js_forget"] = float(np.mean(js_divergence(probs[fm], ref[fm])))
            row["js_retain"] = float(np.mean(js_divergence(probs[~fm], ref[~fm])))
            if self.feature_samples > 0:
                idx, rf, n_ref = self.ref_feats[fset]
                ops = scan_graph(model).editable
                row["deep_cka"] = deep_cka(extract(model, ops, self.test, idx), rf, len(ops), n_ref)
        return row


def run_sample(s: Sample, fsets: list[tuple], methods: list[str], alpha_r: float, alpha_f: float,
               shift: float, log=print) -> list[dict]:
    rows = []
    for fset in fsets:
        if any(c not in s.classes for c in fset):
            continue
        f = list(fset)
        retain = [c for c in s.classes if c not in f]
        for meth in methods:
            info = {}
            t0 = time.perf_counter()
            if meth == "original":
                model = s.proto
            elif meth == "retrained":
                if fset not in s.refs:
                    continue
                model = s.refs[fset]
            elif meth == "head_bias":
                model = head_bias(s.proto, s.ops, f, shift)
            elif meth == "kodge":
                model = apply_matrices(s.proto, s.ops, kodge_matrices(s.ops, s.stats, f, retain, alpha_r, alpha_f))
            else:
                model, info = damp_variant(s.proto, s.ops, s.calib, f, retain, s.stats, meth)
            edit_s = time.perf_counter() - t0 if meth not in ("original", "retrained") else None
            row = {"sample": s.name, "forget": f, "method": meth, "edit_seconds": edit_s,
                   "collect_seconds": s.collect_seconds, **info}
            row.update(s.evaluate(model, fset, s.base if meth == "original" else None))
            rows.append(row)
            log(f"  {s.name} {f} {meth}: forget {100 * row['forget_acc']:.2f}% retain {100 * row['retain_acc']:.2f}% "
                f"worst drop {100 * row['worst_drop']:+.2f}" + (f" edit {edit_s:.2f}s" if edit_s else ""))
    return rows


# ------------------------------------------------------------------------------------------- table
COLS = [("forget_acc", "forget acc", 100, "%"), ("retain_acc", "retain acc", 100, "%"),
        ("worst_drop", "worst retain-class drop (pts)", 100, ""),
        ("mia_entropy", "MIA entropy (member rate)", 100, "%"), ("mia_confidence", "MIA confidence (member rate)", 100, "%"),
        ("js_forget", "JS to ref, forget", 1, ""), ("js_retain", "JS to ref, retain", 1, ""),
        ("deep_cka", "deep CKA to ref", 1, ""), ("edit_seconds", "edit time (s)", 1, "")]


def _cell(vals: list, scale: float, unit: str) -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    digits = 2 if unit == "%" or scale == 100 else 3
    m = scale * float(np.mean(vals))
    if len(vals) == 1:
        return f"{m:.{digits}f}{unit}"
    lo, hi = scale * min(vals), scale * max(vals)
    return f"{m:.{digits}f}{unit} [{lo:.{digits}f}, {hi:.{digits}f}]"


def markdown(rows: list[dict]) -> str:
    head = "| sample | method | sets | " + " | ".join(c[1] for c in COLS) + " |"
    lines = [head, "|" + "---|" * (3 + len(COLS))]
    order = {m: i for i, m in enumerate(METHODS)}
    keys = sorted({(r["sample"], r["method"]) for r in rows},
                  key=lambda k: (SAMPLES.index(k[0]) if k[0] in SAMPLES else 99, order[k[1]]))
    for sample, meth in keys:
        rs = [r for r in rows if r["sample"] == sample and r["method"] == meth]
        cells = [_cell([r.get(k) for r in rs], sc, u) for k, _, sc, u in COLS]
        lines.append(f"| {sample} | {meth} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_sets(classes: list[int] | None, pairs: list[str]) -> list[tuple] | None:
    singles = [(c,) for c in classes] if classes is not None else None
    ps = [tuple(sorted(int(c) for c in p.split(","))) for p in pairs]
    return None if singles is None else singles + ps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", nargs="*", default=SAMPLES)
    ap.add_argument("--classes", nargs="*", type=int, default=None,
                    help="single classes to forget (default: every class)")
    ap.add_argument("--pairs", nargs="*", default=None,
                    help="forget sets of several classes as 'a,b' (default: 0,1 2,7 3,5 4,9; none when "
                         "--classes is given unless listed)")
    ap.add_argument("--methods", nargs="*", default=METHODS, choices=METHODS)
    ap.add_argument("--alpha-r", type=float, default=100.0, help="Kodge retain importance alpha")
    ap.add_argument("--alpha-f", type=float, default=3.0, help="Kodge forget importance alpha")
    ap.add_argument("--bias-shift", type=float, default=100.0)
    ap.add_argument("--feature-samples", type=int, default=200, help="forget test images for deep CKA (0: skip)")
    ap.add_argument("--no-mia", action="store_true")
    ap.add_argument("--samples-dir", type=Path, default=ROOT / "samples")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    pairs = args.pairs if args.pairs is not None else ([] if args.classes is not None else PAIRS)
    rows = []
    t_all = time.perf_counter()
    for name in args.samples:
        s = Sample(name, args.samples_dir, args.feature_samples, not args.no_mia)
        print(f"{name}: statistics (Grams of all {len(s.classes)} classes) collected in {s.collect_seconds:.2f}s",
              file=sys.stderr)
        fsets = parse_sets(args.classes if args.classes is not None else s.classes, pairs)
        rows += run_sample(s, fsets, args.methods, args.alpha_r, args.alpha_f, args.bias_shift,
                           log=lambda m: print(m, file=sys.stderr))
    print(f"Kodge alpha_r={args.alpha_r} alpha_f={args.alpha_f}; head-bias shift {args.bias_shift}; "
          f"deep CKA on {args.feature_samples} forget test images; total {time.perf_counter() - t_all:.0f}s")
    print("cells: mean [min, max] over the forget sets\n")
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: (str(v) if isinstance(v, Path) else v)
                                                  for k, v in vars(args).items()}, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
