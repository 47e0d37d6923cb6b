"""The least `forget -q` can cost as designed, per model, next to what it costs (issue 14's 1.5x target).

The default edit runs, at the least: statistics on the fit images (1 - h of the calibration set, h the held-out
share) in a session s times a plain one's cost per image, then the original and one candidate on the held-out
images (2 h). With P the plain script's inference time and D the start-up gap (forget's imports less the plain
script's, measured in a fresh interpreter), the floor is

    floor = (t_plain + D + P * ((1 - h) s + 2 h - 1)) / t_plain,    P = t_plain - plain start-up.

It reads the two result files the benchmarks write (no model is run here):

  python bench/process_ratio.py --zoo-data /tmp/zoo --json bench/results/process_ratio.json
  python bench/stats_overhead.py --zoo-data /tmp/zoo --json bench/results/stats_overhead.json
  python bench/floor.py                      # the table (markdown)

A model whose batch the original fixes at 1 runs faster in forget (a symbolic batch) than in the plain script
(fed one image at a time): its floor as written here is above what it can reach.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def floor_ratio(t_plain: float, startup_plain: float, startup_gap: float, s: float, held: float) -> float:
    """The least forget / plain ratio of one statistics pass (fit share, s times a plain pass per image) and
    the held-out check with the original and one candidate, plus the start-up gap."""
    p = max(t_plain - startup_plain, 0.0)
    return (t_plain + startup_gap + p * ((1 - held) * s + 2 * held - 1)) / t_plain


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--process", type=Path, default=RESULTS / "process_ratio.json")
    ap.add_argument("--stats", type=Path, default=RESULTS / "stats_overhead.json")
    ap.add_argument("--held", type=float, default=0.2, help="held-out share (forget's --holdout)")
    args = ap.parse_args()
    proc, stats = json.loads(args.process.read_text()), json.loads(args.stats.read_text())
    if "startup" not in proc:
        raise SystemExit(f"{args.process}: no start-up line (rerun bench/process_ratio.py)")
    start = proc["startup"]
    gap = start["forget_s"] - start["plain_s"]
    s_of = {r["model"]: r["ratio"] for r in stats["rows"]}
    print(f"start-up: plain {start['plain_s']:.2f} s, forget {start['forget_s']:.2f} s (gap D = {gap:.2f} s); "
          f"held-out share {args.held}\n")
    print("| model | plain pass (s) | statistics session s | floor | measured |")
    print("|---|---|---|---|---|")
    for r in proc["rows"]:
        s = s_of.get(r["model"])
        if s is None:
            continue
        f = floor_ratio(r["plain_s"], start["plain_s"], gap, s, args.held)
        print(f"| {r['model']} | {r['plain_s']:.2f} | {s:.2f}x | {f:.2f}x | {r['ratio']:.2f}x |")


if __name__ == "__main__":
    main()
