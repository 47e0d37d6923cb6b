"""Readable plain-text tables for the CLI."""
from __future__ import annotations

from typing import Sequence


def table(headers: Sequence[str], rows: Sequence[Sequence], title: str | None = None) -> str:
    """Left-align text columns, right-align numbers; one header rule."""
    cells = [[_fmt(v) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(_is_num(r[i]) for r in rows) and rows for i in range(len(headers))]

    def line(vals):
        return "  ".join(v.rjust(w) if numeric[i] else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths))).rstrip()

    out = [title] if title else []
    out += [line(list(headers)), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out)


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def inspect_table(result) -> str:
    """The editable operators (with the exporter's module scope when known) and the skipped ones."""
    scoped = any(o.scope for o in result.editable)
    rows = [[o.depth_index, f"{o.depth:.2f}", o.node_name] + ([o.scope or "-"] if scoped else [])
            + [o.op_type, o.weight_path or o.weight_name, "x".join(map(str, o.weight_shape)), o.feature_dim,
               "yes" if o.shared else "no"]
            for o in result.editable]
    headers = ["#", "depth", "node"] + (["scope"] if scoped else []) + ["op", "weight", "shape", "in-dim", "shared"]
    text = table(headers, rows, title=f"{len(result.editable)} editable operator(s)")
    if result.skipped:
        skip_scoped = any(s.scope for s in result.skipped)
        text += "\n\n" + table(["node"] + (["scope"] if skip_scoped else []) + ["op", "why not editable"],
                               [[s.node_name] + ([s.scope or "-"] if skip_scoped else []) + [s.op_type, s.reason]
                                for s in result.skipped],
                               title=f"{len(result.skipped)} operator(s) not edited")
    return text


def _per_pass(result, i: int, field: str, fmt: str) -> str:
    """One plan field of layer i in every pass, joined with '/' ('-' where a pass did not set it)."""
    values = [getattr(ps.plans[i], field) for ps in result.passes]
    return "/".join("-" if v is None else format(v, fmt) for v in values)


def layers_table(result) -> str:
    """One row per editable operator: first-pass subspace and separability, alpha of every pass, total change.

    A scope column appears when the exporter recorded module paths; quantisation columns (requantisation
    error relative to the edit, clipped values) appear when a QDQ weight was requantised.
    """
    first = result.passes[0].plans
    scoped = any(p.op.scope for p in first)
    quant = any(p.quant_error is not None for ps in result.passes for p in ps.plans)
    rows = []
    for i, p in enumerate(first):
        rows.append([p.op.depth_index, f"{p.op.depth:.2f}", p.op.node_name] + ([p.op.scope or "-"] if scoped else [])
                    + [p.op.op_type, f"{p.layer_separability:.3f}", p.rank, f"{p.separability:.3f}",
                       _per_pass(result, i, "alpha", ".3f"), f"{result.relative_change[p.op.node_name]:.4f}"]
                    + ([_per_pass(result, i, "quant_error", ".3f"), _per_pass(result, i, "clipped", "d")]
                       if quant else []))
    title = f"Per-layer edit ({len(result.passes)} pass{'es' if len(result.passes) > 1 else ''}; " \
            f"separabilities and rank of pass 1, alpha per pass)"
    headers = (["#", "depth", "node"] + (["scope"] if scoped else [])
               + ["op", "layer sep.", "rank", "subspace sep.", "alpha", "rel. change"]
               + (["quant. err.", "clipped"] if quant else []))
    return table(headers, rows, title=title)


def before_after_table(before, after, validated_on: str) -> str:
    from .metrics import worst_retain_drop

    c, drop = worst_retain_drop(before, after)
    rows = [["forget accuracy", pct(before.forget_accuracy), pct(after.forget_accuracy)],
            ["retain accuracy (mean of classes)", pct(before.retain_accuracy), pct(after.retain_accuracy)],
            ["worst retain class", f"{before.worst_retain_class} ({pct(before.worst_retain_accuracy)})",
             f"{after.worst_retain_class} ({pct(after.worst_retain_accuracy)})"],
            ["largest retain-class drop", "", "-" if c is None else f"class {c}: {100 * drop:+.2f} pts"]]
    return table(["metric", "before", "after"], rows, title=f"Validation on {validated_on} ({before.samples} samples)")


def per_class_table(summary, original=None) -> str:
    headers = ["class", "role", "accuracy"] + (["original", "change"] if original else [])
    rows = []
    for c, a in sorted(summary.per_class.items()):
        row = [c, "forget" if c in summary.forget else "retain", pct(a)]
        if original:
            o = original.per_class.get(c)
            row += [pct(o), "-" if o is None else f"{100 * (a - o):+.2f} pts"]
        rows.append(row)
    return table(headers, rows, title="Per-class accuracy")
