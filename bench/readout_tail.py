"""How far unseen forget images reach beyond the held-out ones: the readout shift's terms, measured.

For every single-class forget set of the given models: DAMP's representation edit as `forget` chooses it
(readout off), then the forget margins m = s_c - max_retain s_r (readout.forget_margins) of the held-out
forget images, the fit forget images, the held-out retain images and the test forget images. Each rule
for the shift t is scored by the share of test forget images whose margin stays above t (those would
still be read as the class after the readout, in log-score units, gain 1):

  python bench/readout_tail.py --zoo-data /tmp/zoo --models cifar10_winml mnist_cntk_zoo8 --json margins.json
  python bench/readout_tail.py --from-json margins.json            # the rules again, no model run

"sets that still read the class" are those whose representation edit leaves at least 2% of test forget
images with a positive margin; the rules without the gap term show how each tail term does alone.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo import load_data, model_files  # noqa: E402

from onnx_damp.method import readout as ro  # noqa: E402


def margins(name: str, zoo_data: Path, holdout: float = 0.2) -> list[dict]:
    from onnx_damp.data.dataset import subset
    from onnx_damp.method.pipeline import damp_edit
    from onnx_damp.method.selection import split_holdout
    from onnx_damp.ops.graph import scan_graph
    from onnx_damp.options import MethodOptions
    from onnx_damp.runtime.modelio import load_model
    from onnx_damp.runtime.predict import predict
    from onnx_damp.stats.collector import collect

    files = model_files(name, zoo_data)
    if files is None:
        raise SystemExit(f"{name}: no data (zoo/prepare.py --out {zoo_data})")
    model_path, calib_path, test_path, _ = files
    proto = load_model(model_path)
    calib, test = load_data(calib_path, proto), load_data(test_path, proto)
    ops = scan_graph(proto).editable
    classes = [int(c) for c in np.unique(calib.y)]
    fit_idx, held_idx = split_holdout(calib.y, holdout)
    stats = collect(proto, ops, subset(calib, fit_idx), None)
    held = np.zeros(len(calib.y), bool)
    held[held_idx] = True
    rows = []
    for c in classes:
        retain = [r for r in classes if r != c]
        out = damp_edit(proto, ops, calib, [c], retain, MethodOptions(readout=False, holdout=holdout),
                        first_stats=stats, outputs=False)
        m_cal = ro.forget_margins(ro.log_scores(predict(out.representation, calib)), [c], retain)[:, 0]
        m_test = ro.forget_margins(ro.log_scores(predict(out.representation, test)), [c], retain)[:, 0]
        f = calib.y == c
        rows.append({"model": name, "forget": c, "held_forget": m_cal[held & f].tolist(),
                     "fit_forget": m_cal[~held & f].tolist(), "held_retain": m_cal[held & ~f].tolist(),
                     "test_forget": m_test[test.y == c].tolist()})
        print(f"{name} {c}: test forget images with a positive margin {100 * np.mean(m_test[test.y == c] > 0):.1f}%",
              file=sys.stderr, flush=True)
    return rows


def rules(target: float) -> dict:
    def tail(h):
        return h.mean() + ro.tolerance_factor(len(h), target) * h.std(ddof=1)

    return {
        "shipped: max(gap, max, tolerance bound, 0)": lambda h, f, r: float(ro.readout_shift(h[:, None], r[:, None], target)[0]),
        "before: max(gap, max, 0)": lambda h, f, r: float(ro.readout_shift(h[:, None], r[:, None])[0]),
        "no gap: max(max, 0)": lambda h, f, r: max(h.max(), 0.0),
        "no gap: max(max, tolerance bound, 0)": lambda h, f, r: max(h.max(), tail(h), 0.0),
        "no gap: max(max of held-out and fit images, 0)": lambda h, f, r: max(h.max(), f.max(), 0.0),
    }


def table(rows: list[dict], target: float) -> str:
    out = [f"| rule | sets | sets above {100 * target:g}% | mean share above | largest share above |", "|---|---|---|---|---|"]
    for name, rule in rules(target).items():
        shares = []
        for r in rows:
            h, f, rr, t = (np.asarray(r[k]) for k in ("held_forget", "fit_forget", "held_retain", "test_forget"))
            if name.startswith("no gap") and np.mean(t > 0) < 0.02:
                continue
            shares.append(float(np.mean(t > rule(h, f, rr))))
        out.append(f"| {name} | {len(shares)} | {sum(s > target for s in shares)} | {100 * np.mean(shares):.2f}% | "
                   f"{100 * np.max(shares):.2f}% |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo-data", type=Path, default=Path("/tmp/zoo"))
    ap.add_argument("--models", nargs="*", default=["cifar10_winml", "cifar10_mlperftiny_resnet8", "mnist_cntk_zoo8",
                                                    "mnist_burn", "mnist", "fashion_mnist"])
    ap.add_argument("--target", type=float, default=0.01)
    ap.add_argument("--json", type=Path, default=None, help="write the margins here")
    ap.add_argument("--from-json", type=Path, nargs="*", default=None, help="margins written by --json")
    args = ap.parse_args(argv)
    if args.from_json:
        rows = sum((json.loads(p.read_text()) for p in args.from_json), [])
    else:
        rows = sum((margins(m, args.zoo_data) for m in args.models), [])
        if args.json:
            args.json.write_text(json.dumps(rows))
    print(table(rows, args.target))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
