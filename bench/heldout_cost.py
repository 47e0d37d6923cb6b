"""Held-out images the default edit runs per forget set, and the candidate it keeps: a cost that does not move
with the machine's load, for comparing candidate-search rules (docs/benchmarks.md, "screening the stronger
candidates"). Per model, statistics once on the fit images (as bench/zoo.py), then `damp_edit` per forget set
(every class, and the data set's pairs) with its held-out check counted; no test image is run.

  python bench/heldout_cost.py --zoo-data /tmp/zoo --json /tmp/cost.json             # samples and zoo models
  python bench/heldout_cost.py --models --extra NAME=MODEL,CALIB,TEST,DATASET ...    # others (zoo.py's form)
  python bench/heldout_cost.py --compare /tmp/cost_a.json /tmp/cost_b.json          # two runs side by side
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo  # noqa: E402

from onnx_damp.data.dataset import subset  # noqa: E402
from onnx_damp.method.pipeline import damp_edit  # noqa: E402
from onnx_damp.method.selection import split_holdout  # noqa: E402
from onnx_damp.ops.graph import scan_graph  # noqa: E402
from onnx_damp.options import MethodOptions  # noqa: E402
from onnx_damp.progress import Phases, Progress  # noqa: E402
from onnx_damp.runtime.modelio import load_model  # noqa: E402
from onnx_damp.stats.collector import collect  # noqa: E402


class CountingPhases(Phases):
    """Quiet phases that add up the work each phase label did (images, for the held-out check)."""

    def __init__(self) -> None:
        super().__init__(quiet=True)
        self.done: dict[str, int] = defaultdict(int)

    def __call__(self, label: str, total: int) -> Progress:
        counts = self.done

        class Counted(Progress):
            def close(self) -> None:
                counts[label] += self.done
                super().close()

        return Counted(total, label, quiet=True)


def model_rows(name: str, files) -> list[dict]:
    model_path, calib_path, _, dataset = files
    proto = load_model(model_path)
    calib = zoo.load_data(calib_path, proto)
    ops = scan_graph(proto).editable
    classes = [int(c) for c in np.unique(calib.y)]
    fit_idx, _ = split_holdout(calib.y)
    stats = collect(proto, ops, subset(calib, fit_idx), None)
    rows = []
    for fset in [(c,) for c in classes] + zoo.PAIRS.get(dataset, []):
        f = list(fset)
        phases = CountingPhases()
        out = damp_edit(proto, ops, calib, f, [c for c in classes if c not in f], MethodOptions(),
                        first_stats=stats, outputs=False, phases=phases)
        rows.append({"model": name, "forget": f, "heldout_images": phases.done["held-out check"],
                     "candidate": out.passes[-1].candidate})
    return rows


def compare(a_path: Path, b_path: Path) -> None:
    a, b = json.loads(a_path.read_text()), json.loads(b_path.read_text())
    key = {(r["model"], tuple(r["forget"])): r for r in a}
    pairs = [(key[(r["model"], tuple(r["forget"]))], r) for r in b if (r["model"], tuple(r["forget"])) in key]
    print("| model | A images | B images | sets B more / fewer | picks changed |")
    print("|---|---|---|---|---|")
    for m in dict.fromkeys(x["model"] for x, _ in pairs):
        print(compare_row(m, [(x, y) for x, y in pairs if x["model"] == m]))
    print(compare_row(f"all ({len(pairs)} sets)", pairs))


def compare_row(label: str, pairs: list[tuple[dict, dict]]) -> str:
    """One table row over pairs of (run A, run B) rows of the same forget sets."""
    a = sum(x["heldout_images"] for x, _ in pairs)
    b = sum(y["heldout_images"] for _, y in pairs)
    more = sum(y["heldout_images"] > x["heldout_images"] for x, y in pairs)
    fewer = sum(y["heldout_images"] < x["heldout_images"] for x, y in pairs)
    changed = sum(x["candidate"] != y["candidate"] for x, y in pairs)
    return f"| {label} | {a} | {b} | {more} / {fewer} | {changed} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo-data", type=Path, default=None)
    ap.add_argument("--models", nargs="*", default=None, help=f"default: {list(zoo.ZOO) + list(zoo.SAMPLES)}")
    ap.add_argument("--extra", nargs="*", default=[], metavar="NAME=MODEL,CALIB,TEST[,DATASET]")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--compare", type=Path, nargs=2, default=None, metavar=("A", "B"))
    args = ap.parse_args()
    if args.compare:
        compare(*args.compare)
        return
    models = []
    for name in (args.models if args.models is not None else list(zoo.ZOO) + list(zoo.SAMPLES)):
        files = zoo.model_files(name, args.zoo_data)
        if files is None:
            print(f"{name}: skipped (no data; see zoo/prepare.py)", file=sys.stderr)
        else:
            models.append((name, files))
    rows = []
    for name, files in models + [zoo.extra_files(spec) for spec in args.extra]:
        got = model_rows(name, files)
        rows += got
        print(f"{name}: {sum(r['heldout_images'] for r in got)} held-out images", file=sys.stderr, flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
