"""Readable plain-text tables for the CLI."""
from __future__ import annotations

from typing import Sequence

from onnx_damp.report.glossary import legend


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
    headers = ["#", "depth", "node"] + (["module"] if scoped else []) + ["op", "weight", "shape", "in-dim", "shared"]
    text = table(headers, rows, title=f"{len(result.editable)} editable operator(s)")
    if result.skipped:
        skip_scoped = any(s.scope for s in result.skipped)
        text += "\n\n" + table(["node"] + (["module"] if skip_scoped else []) + ["op", "why not editable"],
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
                    + [p.op.op_type, "-" if p.layer_separability is None else f"{p.layer_separability:.3f}", p.rank,
                       f"{p.separability:.3f}",
                       _per_pass(result, i, "alpha", ".3f"), f"{result.relative_change[p.op.node_name]:.4f}"]
                    + ([_per_pass(result, i, "quant_error", ".3f"), _per_pass(result, i, "clipped", "d")]
                       if quant else []))
    title = f"Per-layer edit ({len(result.passes)} pass{'es' if len(result.passes) > 1 else ''}; " \
            f"separabilities and rank of pass 1, alpha per pass)"
    headers = (["#", "depth", "node"] + (["module"] if scoped else [])
               + ["op", "layer sep.", "rank", "subspace sep.", "alpha", "rel. change"]
               + (["quant. err.", "clipped"] if quant else []))
    keys = ("layer sep.", "subspace sep.", "alpha", "rel. change") + (("quant. err.",) if quant else ())
    return table(headers, rows, title=title) + "\n" + legend(*keys)


def class_label(k: int | None, names: "list[str] | None") -> str:
    """'3', or '4 (Coat)' where a name says more than the index."""
    if k is None:
        return "-"
    return f"{k} ({names[k]})" if names and 0 <= k < len(names) and names[k] != str(k) else str(k)


def goals(gates: Sequence = ()) -> dict[str, str]:
    """What each before/after row should read, from the gates checked (GateResult), else the direction."""
    by = {g.gate: g.threshold for g in gates}
    out = {"forget": "lower is better", "retain": "keep (higher is better)", "class": "near 0 (a loss is negative)"}
    if "max_forget_acc" in by:
        out["forget"] = f"at most {100 * by['max_forget_acc']:g}%"
    if "max_retain_drop" in by:
        out["retain"] = f"down at most {_points(by['max_retain_drop'])}"
    if "max_class_drop" in by:
        out["class"] = f"no class below -{_points(by['max_class_drop'])}"
    return out


def _points(fraction: float) -> str:
    v = 100 * fraction
    return f"{v:g} pt" + ("" if v == 1 else "s")


def before_after_table(before, after, validated_on: str, names: "list[str] | None" = None,
                       gates: Sequence = ()) -> str:
    """Forget and retain accuracy before and after, and what each should read (the gates checked); changes
    are edited minus original (a loss is negative), as in the verdict line and the HTML page."""
    from onnx_damp.verify.metrics import worst_retain_drop

    c, drop = worst_retain_drop(before, after)
    goal = goals(gates)
    forgotten = ", ".join(class_label(k, names) for k in before.forget)
    rows = [[f"forget accuracy (class {forgotten})", pct(before.forget_accuracy), pct(after.forget_accuracy),
             goal["forget"]],
            ["retain accuracy (mean of classes)", pct(before.retain_accuracy), pct(after.retain_accuracy),
             goal["retain"]],
            ["worst retain class", f"{class_label(before.worst_retain_class, names)} "
                                   f"({pct(before.worst_retain_accuracy)})",
             f"{class_label(after.worst_retain_class, names)} ({pct(after.worst_retain_accuracy)})", ""],
            ["largest retain-class drop", "", "-" if c is None else
             (f"class {class_label(c, names)}: {-100 * drop:+.2f} pts" if drop > 0
              else "none: no retain class lost accuracy"), goal["class"]]]
    return table(["metric", "before", "after", "goal"], rows,
                 title=f"Validation on {validated_on} ({before.samples} samples)")


def stages_table(result) -> str:
    """Forget accuracy after each stage (held-out calibration images and validation data) and the readout shift."""
    ro, st = result.readout, result.stages or {}
    rep = (st.get("representation") or {}).get("forget_accuracy")
    fin = (st.get("readout") or {}).get("forget_accuracy") if ro.applied else None
    rows = [["representation edit (DAMP)", pct(ro.before.forget_accuracy) if ro.before else "-", pct(rep)],
            ["+ readout stage" + ("" if ro.applied else " (not applied)"),
             pct(ro.after.forget_accuracy) if ro.after else "-", pct(fin) if fin is not None else "-"]]
    out = table(["stage", "forget acc. (held-out calib.)", f"forget acc. ({result.validated_on})"], rows,
                title="Stages")
    if ro.applied:
        shifts = ", ".join(f"class {c}: {s:+.3g}" for c, s in zip(ro.classes, ro.shift))
        out += f"\nreadout: bias {ro.bias} of {ro.node} lowered on the forget channels ({shifts})"
    elif ro.reason:
        out += f"\nreadout not applied: {ro.reason}"
    return out


def reference_js_rows(reference_js: dict) -> list[list[str]]:
    """Rows 'JS to reference, <model>, forget/retain samples' for the summary tables."""
    rows = []
    for name, js in reference_js.items():
        rows.append([f"JS to reference, {name}, forget samples", f"{js['forget']:.4f}"])
        rows.append([f"JS to reference, {name}, retain samples", f"{js['retain']:.4f}"])
    return rows


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


def _pct3(values: dict, key: str) -> str:
    """'model / original / reference' percentages of one MIA protocol, for the models present."""
    return " / ".join(pct(values[name][key].member_rate) for name in ("model", "original", "reference")
                      if name in values)


def _f(v, fmt: str = ".3f") -> str:
    """A number in fmt, '-' for None; a value that rounds to zero shows without a minus sign."""
    if v is None:
        return "-"
    digits = int(fmt.rstrip("f").split(".")[-1] or 0) if fmt.endswith("f") else None
    return format(round(v, digits) + 0.0 if digits is not None else v, fmt)


def verification_table(v) -> str:
    """Selectivity, membership inference, CKA gain and bias shift in one metric/value table."""
    rows = []
    if v.selectivity is not None:
        s = v.selectivity
        rows.append(["selectivity: forget drop - mean retain drop (higher is better, 1 ideal)",
                     f"{s['selectivity']:+.4f} (forget {100 * s['forget_drop']:+.2f} pts, "
                     f"retain {100 * s['mean_retain_drop']:+.2f} pts)"])
    if v.mia:
        names = " / ".join(n for n in ("model", "original", "reference") if n in v.mia)
        rows.append([f"MIA forget member rate, entropy attack ({names}; near the reference's is best)",
                     _pct3(v.mia, "entropy")])
        rows.append([f"MIA forget member rate, confidence attack ({names}; lower is better)",
                     _pct3(v.mia, "confidence")])
        m = v.mia["model"]
        rows.append(["MIA attack balanced accuracy on retain (entropy / confidence; the attack's own quality)",
                     f"{pct(m['entropy'].attack_balanced_accuracy)} / {pct(m['confidence'].attack_balanced_accuracy)}"])
    elif v.mia_reason:
        rows.append(["membership inference", f"n/a: {v.mia_reason}"])
    if v.cka_gain_layers:
        first, last = v.cka_gain_layers[0], v.cka_gain_layers[-1]
        span = f"layer {last}" if first == last else f"layers {first}-{last}"
        rows.append([f"CKA gain to reference, mean of {span} (higher: deep features nearer the retrained model)",
                     _f(v.cka_gain, "+.4f")])
    b = v.bias_shift
    if b is not None and b.available:
        rows.append(["forget logit change, original -> model (mean)", f"{b.delta_logit:+.3f}"])
        rows.append(["  from the head bias / head weights / features",
                     " / ".join(_f(t, "+.3f") for t in (b.bias, b.head_weight, b.features))])
        rows.append(["  bias-shift share (lower: less of the drop is the head bias alone)", _f(b.bias_share, ".3f")])
    elif b is not None:
        rows.append(["bias-shift share", f"n/a: {b.reason}"])
    text = table(["metric", "value"], rows, title="Verification") if rows else ""
    for note in v.notes:
        text += f"\nnote: {note}"
    return text


def verification_layers_table(v) -> str:
    """Per editable operator: CKA to the reference (original -> model) and residual forget structure."""
    if not v.layers:
        return ""
    has_cka = any(lv.cka_model is not None for lv in v.layers)
    has_sep = any(lv.distance_model is not None for lv in v.layers)
    scoped = any(lv.scope for lv in v.layers)
    rows = []
    for lv in v.layers:
        row = [lv.index, lv.node] + ([lv.scope or "-"] if scoped else []) + [lv.op_type]
        if has_cka:
            row += [f"{_f(lv.cka_original)} -> {_f(lv.cka_model)}", _f(lv.cka_gain, "+.3f")]
        if has_sep:
            row += [f"{_f(lv.distance_original, '.2f')} -> {_f(lv.distance_model, '.2f')}", _f(lv.distance_ratio),
                    f"{_f(lv.separability_original)} -> {_f(lv.separability_model)}"]
        rows.append(row)
    headers = ["#", "node"] + (["module"] if scoped else []) + ["op"] \
        + (["CKA to ref.: orig. -> model", "gain"] if has_cka else []) \
        + (["forget Delta: orig. -> model", "ratio", "separability: orig. -> model"] if has_sep else [])
    title = (f"Per-layer verification ({v.forget_samples} forget"
             + (f" / {v.retain_samples} retain" if v.retain_samples else "") + " samples)")
    keys = (("CKA to ref.",) if has_cka else ()) + (("forget Delta",) if has_sep else ())
    return table(headers, rows, title=title) + ("\n" + legend(*keys) if keys else "")
