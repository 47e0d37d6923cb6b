"""Ablation: every-token statistics for the attention in-projection only, class-token rows elsewhere.

The attention in-projection (q, k, v) reads every token, and the class token gathers its class evidence
through the keys and values of the patch tokens, which class-token rows do not see. This runs
`bench/quality.py`'s forget sets with the in-projection operators (node names matching --pattern) planned
from every token row (`--features position` statistics) and every other operator from the default
(`auto`: class-token rows), and prints the same table as quality.py.

  python bench/ablation_attention_tokens.py --samples vit_mnist vit_fashion
"""
from __future__ import annotations

import argparse
import functools
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import quality  # noqa: E402
from onnx_damp.stats.collector import collect  # noqa: E402
from onnx_damp.method.pipeline import damp_edit  # noqa: E402


def mixed_collector(pattern: re.Pattern):
    """A stats.collect that replaces the statistics of the matching operators by every-token ones."""
    def collector(model, ops, calib, forget, batch_size=128, device="cpu", feature_mode="auto", input_name=None,
                  progress=None, layouts=None, **kw):
        st = collect(model, ops, calib, forget, batch_size, device, "auto", input_name, progress, layouts, **kw)
        chosen = [op for op in ops if pattern.search(op.node_name)]
        if chosen:
            every = collect(model, chosen, calib, forget, batch_size, device, "position", input_name)
            st.layers.update({op.node_name: every.layers[op.node_name] for op in chosen})
        return st
    return collector


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", nargs="+", default=["vit_mnist", "vit_fashion"])
    ap.add_argument("--pattern", default=r"self_attn/MatMul$", help="regex on node names (default: the in-projection)")
    args = ap.parse_args()
    collector = mixed_collector(re.compile(args.pattern))
    quality.collect = lambda model, ops, calib, classes, feature_mode="auto": collector(model, ops, calib, classes)
    quality.damp_edit = functools.partial(damp_edit, collector=collector)
    rows = []
    for s in args.samples:
        rows += quality.run_sample(s, "auto", True, "energy", 0.01, quality.PAIRS, 3)
    print(f"every-token statistics for nodes matching {args.pattern!r}, class-token rows elsewhere")
    print(quality.markdown(rows))
    for s in args.samples:
        mine = [r for r in rows if r["sample"] == s]
        print(f"{s}: {sum(r['pass'] for r in mine)}/{len(mine)} within bounds; mean forget acc "
              f"{100 * sum(r['forget_acc'] for r in mine) / len(mine):.2f}%, mean worst retain-class drop "
              f"{100 * sum(r['worst_drop'] for r in mine) / len(mine):.2f} pts")


if __name__ == "__main__":
    main()
