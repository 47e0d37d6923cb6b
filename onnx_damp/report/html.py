"""The `--html` report: one self-contained HTML page built from a result's JSON dict (`to_dict()`).

render_html(report) -> str is pure (no files, no network): the figures of plots.py are embedded as
base64 PNG data URIs and the styles inline, so the page renders offline. write_html() writes it atomically.
"""
from __future__ import annotations

import base64
import html
import math
import os
from pathlib import Path
from typing import Sequence

from onnx_damp.report import plots
from onnx_damp.report.glossary import GLOSSARY
from onnx_damp.report.tables import class_label

MAX_BARS = 40          # per-class accuracy bars at most (forget classes + the retain classes that moved most)
MAX_DESTINATIONS = 20  # predicted classes at most in the forget-sample confusion plot

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;margin:0;background:#f5f6f8;
color:#222;line-height:1.4}
main{max-width:1180px;margin:0 auto;padding:16px 24px 40px}
h1{font-size:1.5em;margin:.4em 0 .2em}h2{font-size:1.15em;margin:1.4em 0 .5em;border-bottom:1px solid #ccd;
padding-bottom:.2em}h3{font-size:1em;margin:.2em 0 .4em}
.meta{color:#555;font-size:.9em}.verdict{display:inline-block;padding:.25em .7em;border-radius:4px;
font-weight:600;margin:.4em 0}.pass{background:#e3f4e6;color:#1b6e2b}.fail{background:#fbe4e4;color:#a61b1b}
.none{background:#eceef2;color:#555}.big{font-size:1.05em}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:16px}
.card{background:#fff;border:1px solid #dde;border-radius:6px;padding:12px 14px;overflow-x:auto}
.wide{grid-column:1/-1}
figure{margin:0}figure img{display:block;width:100%;height:auto;margin:0 auto}
figcaption,.note{color:#555;font-size:.85em;margin-top:.4em}
.na{color:#666;font-style:italic;padding:1.5em .5em;text-align:center;background:#fafafa;border:1px dashed #ccd;
border-radius:4px}
table{border-collapse:collapse;font-size:.88em;margin:.2em 0}
th,td{border-bottom:1px solid #e3e5ea;padding:3px 9px;text-align:left;vertical-align:top}
th{background:#f0f2f6;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.forget td{color:#a61b1b;font-weight:600}.ok{color:#1b6e2b;font-weight:600}.bad{color:#a61b1b;font-weight:600}
code{font-size:.92em}
"""


# ------------------------------------------------------------------------------------------- formatting
def _e(v) -> str:
    return html.escape(str(v), quote=True)


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def _num(x, fmt: str = ".4f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    digits = fmt.rstrip("f").split(".")[-1] if fmt.endswith("f") else ""
    return format(round(x, int(digits)) + 0.0 if digits.isdigit() else x, fmt)  # no "-0.000"


def _pts(x) -> str:
    return "-" if x is None else f"{100 * x:+.2f} pts"


def _table(headers: Sequence[str], rows: Sequence[Sequence], numeric: Sequence[int] = (),
           row_classes: Sequence[str] | None = None) -> str:
    """rows hold already-escaped HTML cells; columns in numeric are right-aligned."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for k, r in enumerate(rows):
        cls = f' class="{row_classes[k]}"' if row_classes and row_classes[k] else ""
        cells = "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{_e(alt)}" style="max-width:{plots.css_width(png)}px" '
            f'src="data:image/png;base64,{data}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _na(text: str) -> str:
    return f'<div class="na">not available: {_e(text)}</div>'


# ---------------------------------------------------------------------------------------------- the view
class _View:
    """The parts of a forget or evaluate report the page needs, under common names."""

    def __init__(self, d: dict):
        self.d = d
        self.kind = "forget" if "passes" in d else "evaluate"
        if self.kind == "forget":
            self.model, self.original = d["after"], d["before"]
            self.model_name = "edited"
        else:
            self.model, self.original = d["model"], d.get("original")
            self.model_name = "model"
        self.forget = [int(c) for c in self.model.get("forget_classes", d.get("forget_classes", []))]
        self.names = d.get("class_names") or None
        self.verification = d.get("verification") or {}
        self.series_names = {"original": "original", "model": self.model_name, "reference": "retrained reference"}

    def name(self, c: int) -> str:
        """The class name where the result has one, else the index."""
        if self.names and 0 <= c < len(self.names):
            return str(self.names[c])
        return str(c)

    def label(self, c: int) -> str:
        """'3' or '4 (Coat)': the index, and the name when it says more (as the terminal tables write it)."""
        return class_label(c, self.names)

    @property
    def forget_label(self) -> str:
        return ", ".join(self.label(c) for c in self.forget)


# ---------------------------------------------------------------------------------------------- sections
def _header(v: _View) -> str:
    d = v.d
    if v.kind == "forget":
        what = f"DAMP forget: class{'es' if len(v.forget) > 1 else ''} {v.forget_label}"
        meta = (f"onnx-damp {_e(d.get('version', ''))} &middot; {len(d.get('passes', []))} pass(es) &middot; "
                f"{_e(d.get('calibration_samples'))} calibration samples &middot; features {_e(d.get('feature_mode'))}"
                f" &middot; validated on {_e(d.get('validated_on'))} ({_e(v.model.get('samples'))} samples)")
        meta += "<br>source model: " + _file(d.get("source_model"), d.get("source_sha256"))
        if d.get("outputs"):
            meta += f"<br>edited model: <code>{_e(', '.join(d['outputs']))}</code>"
    else:
        what = f"Evaluation: forgotten class{'es' if len(v.forget) > 1 else ''} {v.forget_label}"
        meta = f"{_e(v.model.get('samples'))} test samples"
        meta += "" if v.original is not None else " &middot; no --original given: no before/after comparison"
        meta += "<br>model: " + _file(d.get("model_path"), None)
        if d.get("source_sha256"):
            meta += f" &middot; edited by onnx-damp from a model with sha256 <code>{_e(d['source_sha256'][:16])}</code>"
    banner = ""
    if d.get("verdict"):
        from onnx_damp.verify.verdict import Verdict

        vd = Verdict.from_dict(d["verdict"])
        banner = f'<div class="verdict {"pass" if vd.forgotten else "fail"} big">{_e(vd.line(v.names))}</div><br>'
    gates = d.get("gates") or {}
    checks = gates.get("checks") or []
    if not checks:
        verdict = '<span class="verdict none">no gates checked</span>'
    elif gates.get("passed"):
        verdict = '<span class="verdict pass">all gates hold</span>'
    else:
        failed = ", ".join(_gate_option(c["gate"]) for c in checks if not c["passed"])
        verdict = f'<span class="verdict fail">gate failed: {_e(failed)}</span>'
    return f"<h1>{_e(what)}</h1>{banner}<div class='meta'>{meta}</div>{verdict}"


def _file(path, sha) -> str:
    """'<code>path</code> (sha256 0123...)', or that the model was given in memory."""
    out = f"<code>{_e(path)}</code>" if path else "given in memory (no file)"
    return out + (f" (sha256 <code>{_e(sha[:16])}</code>)" if sha else "")


def _gate_option(gate: str) -> str:
    return "--" + gate.replace("_", "-")


def _summary_table(v: _View) -> str:
    """Accuracies of the original, the model, their change and the retrained reference, each metric with
    what it means (report/glossary.py)."""
    m, o, ref, d = v.model, v.original, v.d.get("reference"), v.d
    cols = (["original"] if o is not None else []) + [v.model_name] + (["change"] if o is not None else []) \
        + (["retrained reference"] if ref is not None else [])
    rows = []

    def add(name, values: dict, meaning: str = ""):
        rows.append([_e(name)] + [values.get(c, "") for c in cols] + [_e(GLOSSARY.get(meaning, ""))])

    for name, key in (("forget accuracy", "forget_accuracy"), ("retain accuracy (mean of classes)", "retain_accuracy")):
        vals = {v.model_name: _pct(m.get(key))}
        if o is not None:
            vals["original"] = _pct(o.get(key))
            a, b = m.get(key), o.get(key)
            vals["change"] = _pts(a - b) if a is not None and b is not None else ""
        if ref is not None:
            vals["retrained reference"] = _pct(ref.get(key))
        add(name, vals, name.split(" (")[0])
    worst = {}
    for col, s in (("original", o), (v.model_name, m), ("retrained reference", ref)):
        if s is not None:
            c = s.get("worst_retain_class")
            worst[col] = "-" if c is None else f"{_e(v.label(c))} ({_pct(s.get('worst_retain_accuracy'))})"
    add("worst retain class", worst, "worst retain class")
    wd = d.get("worst_retain_drop")
    if wd and wd.get("class") is not None:
        add("largest retain-class drop", {"change": f"{_e(v.label(wd['class']))}: {_pts(-wd['drop'])}" if wd["drop"] > 0
                                          else "none: no retain class lost accuracy"}, "largest retain-class drop")
    sel = v.verification.get("selectivity")
    if sel:
        add("selectivity", {v.model_name: _num(sel["selectivity"], "+.4f")}, "selectivity")
    if d.get("retain_agreement") is not None:
        add("retain agreement with original", {v.model_name: _pct(d["retain_agreement"])}, "retain agreement")
        add("retain KL(original || model)", {v.model_name: _num(d.get("retain_kl_original_to_model"))}, "retain KL")
    js = d.get("reference_js") or {}
    for part in ("forget", "retain"):
        if js:
            vals = {v.model_name: _num(js.get("model", {}).get(part))}
            if o is not None:
                vals["original"] = _num(js.get("original", {}).get(part))
            add(f"JS divergence to the reference, {part} samples", vals, "JS divergence")
    return _table(["metric"] + cols + ["what it means"], rows, list(range(1, len(cols) + 1)))


def _gates_table(v: _View) -> str:
    checks = (v.d.get("gates") or {}).get("checks") or []
    if not checks:
        return ('<p class="note">No gates checked (<code>--no-gates</code> without <code>--max-forget-acc</code>, '
                '<code>--max-retain-drop</code>, <code>--max-class-drop</code>, <code>--min-cka-gain</code>, '
                '<code>--max-mia</code>).</p>')
    from onnx_damp.verify.measures import GATE_SPECS

    rows = []
    for c in checks:
        op = GATE_SPECS.get(c["gate"], ("", "", ""))[1]
        verdict = '<span class="ok">holds</span>' if c["passed"] else '<span class="bad">fails</span>'
        rows.append([f"<code>{_e(_gate_option(c['gate']))}</code>", _e(c["metric"]), _num(c["value"]),
                     f"{_e(op)} {_num(c['threshold'], 'g')}", verdict,
                     "the tool's target" if c.get("default") else "given"])
    return (_table(["gate", "metric", "value", "need", "verdict", "threshold"], rows, numeric=[2, 3])
            + '<p class="note">The tool\'s own targets are checked unless <code>--no-gates</code>.</p>')


def _verification_table(v: _View) -> str:
    ver = v.verification
    rows = []
    mia = ver.get("mia") or {}
    present = [n for n in ("model", "original", "reference") if n in mia]
    if mia.get("available"):
        for proto, title in (("entropy", "entropy attack"), ("confidence", "confidence attack")):
            rows.append([_e(f"MIA forget member rate, {title} ("
                            + " / ".join(v.series_names[n] for n in present) + ")"),
                         " / ".join(_pct(mia[n][proto]["member_rate"]) for n in present), _m("MIA member rate")])
        mm = mia.get("model", {})
        if mm:
            rows.append([_e("MIA attack balanced accuracy on retain (entropy / confidence)"),
                         f"{_pct(mm['entropy']['attack_balanced_accuracy'])} / "
                         f"{_pct(mm['confidence']['attack_balanced_accuracy'])}", _m("MIA balanced accuracy")])
    else:
        rows.append([_e("membership inference"), _e(f"n/a: {mia.get('reason') or 'not computed'}"),
                     _m("MIA member rate")])
    cg = ver.get("cka_gain") or {}
    if cg.get("layers"):
        ls = cg["layers"]
        span = f"layer {ls[0]}" if ls[0] == ls[-1] else f"layers {ls[0]}-{ls[-1]}"
        rows.append([_e(f"CKA gain to reference (mean of {span})"), _num(cg.get("value"), "+.4f"), _m("CKA gain")])
    b = ver.get("bias_shift") or {}
    if b.get("available"):
        rows.append([_e("forget logit change, original -> model (mean)"), _num(b.get("delta_logit"), "+.3f"),
                     _m("forget logit change")])
        rows.append([_e("  from head bias / head weights / features"),
                     " / ".join(_num(b.get(k), "+.3f") for k in ("bias", "head_weight", "features")), ""])
        rows.append([_e("bias-shift share"), _num(b.get("bias_share"), ".3f"), _m("bias-shift share")])
    elif b:
        rows.append([_e("bias-shift share"), _e(f"n/a: {b.get('reason', '')}"), _m("bias-shift share")])
    fs = ver.get("feature_samples") or {}
    if fs.get("forget"):
        rows.append([_e("feature samples (forget / retain)"), f"{fs['forget']} / {fs.get('retain', 0)}",
                     "test images per side for the per-layer metrics"])
    text = _table(["metric", "value", "what it means"], rows, numeric=[1])
    for note in ver.get("notes") or []:
        text += f'<p class="note">note: {_e(note)}</p>'
    return text


def _m(key: str) -> str:
    """The glossary line of a metric, escaped."""
    return _e(GLOSSARY[key])


def _layers_table(v: _View) -> str:
    layers = v.verification.get("layers") or []
    passes = v.d.get("passes") or []
    plans = passes[0]["layers"] if passes else []
    n = max(len(layers), len(plans))
    if n == 0:
        return _na("no per-layer metrics (give --original or --reference and --feature-samples above 0)")
    has_cka = any(lv["cka_to_reference"]["model"] is not None for lv in layers)
    has_sep = any(lv["forget_distance"]["model"] is not None for lv in layers)
    headers = ["#", "node", "op", "depth"]
    if plans:
        headers += ["layer sep.", "subspace sep.", "alpha per pass", "rel. change"]
    if has_cka:
        headers += ["CKA to ref.: orig. -> " + v.model_name, "gain"]
    if has_sep:
        headers += ["forget Delta: orig. -> " + v.model_name, "ratio"]
    rows = []
    for i in range(n):
        p = plans[i] if i < len(plans) else None
        lv = layers[i] if i < len(layers) else None
        src = p or lv
        depth = p["depth"] if p else (i / (n - 1) if n > 1 else 1.0)
        r = [str(i), f"<code>{_e(src.get('node'))}</code>", _e(src.get("op_type")), _num(depth, ".2f")]
        if plans:
            alphas = " / ".join(_num(ps["layers"][i]["alpha"], ".3f") if i < len(ps["layers"]) else "-"
                                for ps in passes)
            rel = (v.d.get("relative_change") or {}).get(p["node"]) if p else None
            r += [_num(p and p["layer_separability"], ".3f"), _num(p and p["separability"], ".3f"), alphas,
                  _num(rel, ".4f")]
        if has_cka:
            c = (lv or {}).get("cka_to_reference", {})
            r += [f"{_num(c.get('original'), '.3f')} &rarr; {_num(c.get('model'), '.3f')}",
                  _num((lv or {}).get("cka_gain"), "+.3f")]
        if has_sep:
            fd = (lv or {}).get("forget_distance", {})
            r += [f"{_num(fd.get('original'), '.2f')} &rarr; {_num(fd.get('model'), '.2f')}",
                  _num(fd.get("ratio"), ".3f")]
        rows.append(r)
    keys = ((["layer sep.", "subspace sep.", "alpha", "rel. change"] if plans else [])
            + (["CKA to ref."] if has_cka else []) + (["forget Delta"] if has_sep else []))
    legend = "".join(f"<li><b>{_e(k)}</b>: {_m(k)}</li>" for k in keys)
    return (_table(headers, rows, numeric=[0] + list(range(3, len(headers))))
            + (f'<ul class="note">{legend}</ul>' if legend else ""))


# ----------------------------------------------------------------------------------------------- figures
def _accuracy_figure(v: _View) -> str:
    pm = {int(k): a for k, a in v.model["per_class_accuracy"].items()}
    po = {int(k): a for k, a in v.original["per_class_accuracy"].items()} if v.original is not None else {}
    classes = sorted(set(pm) | set(po))
    note = ""
    if len(classes) > MAX_BARS:
        retain = [c for c in classes if c not in v.forget]
        if po:
            retain.sort(key=lambda c: -((po.get(c) or 0.0) - (pm.get(c) or 0.0)))
        else:
            retain.sort(key=lambda c: pm.get(c, 1.0))
        keep = set(c for c in classes if c in v.forget) | set(retain[:max(0, MAX_BARS - len(v.forget))])
        note = (f" Showing the forget classes and the {len(keep) - len(set(v.forget) & keep)} retain classes "
                f"{'that lost the most accuracy' if po else 'with the lowest accuracy'} of {len(classes)}.")
        classes = [c for c in classes if c in keep]
    series = {}
    if po:
        series["original"] = [None if c not in po else 100 * po[c] for c in classes]
    series["model"] = [None if c not in pm else 100 * pm[c] for c in classes]
    png = plots.grouped_bars([v.name(c) for c in classes], series, marked=[c in v.forget for c in classes],
                             ylabel="accuracy (%)", ylim=(0, 110),
                             names=v.series_names)
    caption = ("Per-class accuracy on the test data, " + ("original (grey) vs " if po else "")
               + f"{v.model_name} (blue). Forget classes ({_e(v.forget_label)}) in red, hatched." + _e(note))
    return _img(png, "per-class accuracy, before and after", caption)


def _alpha_figure(v: _View) -> str:
    passes = v.d.get("passes") or []
    if not passes:
        return _na("alpha and the subspace separability come from the DAMP layer plans, which only "
                   "onnx-damp forget reports (this is an evaluate report; see the per-layer table below)")
    lines, styles = {}, {}
    for k, ps in enumerate(passes, 1):
        name = f"alpha, pass {k}"
        lines[name] = ([p["depth"] for p in ps["layers"]], [p["alpha"] for p in ps["layers"]])
        styles[name] = {"color": plots.MODEL, "alpha": 1.0 if k == 1 else max(0.35, 1.0 - 0.3 * (k - 1)),
                        "linestyle": "-" if k == 1 else "--"}
    first = passes[0]["layers"]
    probed = any(p["layer_separability"] is not None for p in first)  # None: not computed (layer_probe=False)
    if probed:
        lines["layer separability (whole input), pass 1"] = ([p["depth"] for p in first],
                                                             [p["layer_separability"] for p in first])
        styles["layer separability (whole input), pass 1"] = {"color": plots.ORIGINAL, "marker": "s"}
    png = plots.depth_lines(lines, ylabel="alpha / separability",
                            styles=styles)
    caption = ("alpha of every layer and pass (alpha = separability of the forget class inside the removed "
               "subspace, the Fisher probe's 2&Phi;(&Delta;/2)-1)"
               + (", and the forget-vs-retain separability of the layer's whole input in pass 1" if probed else "")
               + ", against normalised depth.")
    return _img(png, "alpha and separability per layer against depth", caption)


def _cka_figure(v: _View) -> str:
    layers = v.verification.get("layers") or []
    if not layers or all(lv["cka_to_reference"]["model"] is None for lv in layers):
        notes = " ".join(v.verification.get("notes") or [])
        why = ("needs --reference (a model retrained without the class(es))"
               if "reference" not in (v.verification.get("layer_matching") or {}) else "CKA could not be computed")
        if "--feature-samples 0" in notes:
            why = "per-layer metrics skipped (--feature-samples 0)"
        return _na(f"per-layer CKA to the reference: {why}")
    n = len(layers)
    xs = [i / (n - 1) if n > 1 else 1.0 for i in range(n)]
    lines, styles = {}, {}
    if any(lv["cka_to_reference"]["original"] is not None for lv in layers):
        lines["original"] = (xs, [lv["cka_to_reference"]["original"] for lv in layers])
        styles["original"] = {"color": plots.ORIGINAL, "marker": "s"}
    lines[v.model_name] = (xs, [lv["cka_to_reference"]["model"] for lv in layers])
    styles[v.model_name] = {"color": plots.MODEL}
    png = plots.depth_lines(lines, ylabel="linear CKA to the reference",
                            styles=styles)
    cg = (v.verification.get("cka_gain") or {}).get("value")
    caption = ("Linear CKA between each editable operator's input features and the retrained reference's, "
               "on forget-class test samples (1 = the same representation), against normalised depth (layer "
               f"index / {max(n - 1, 1)}).")
    if cg is not None:
        caption += f" CKA gain over the deepest layers: {_num(cg, '+.4f')}."
    return _img(png, "per-layer CKA to the reference", caption)


def _confusion_figure(v: _View) -> tuple[str, str]:
    conf = v.d.get("forget_confusion") or {}
    present = [n for n in ("original", "model", "reference") if n in conf]
    if not present:
        return _na("the result has no forget_confusion (made by an older onnx-damp)"), ""
    pooled = {}
    for n in present:
        counts = list(conf[n].values())
        size = max(len(c) for c in counts)
        pooled[n] = [sum(c[i] if i < len(c) else 0 for c in counts) for i in range(size)]
    size = max(len(p) for p in pooled.values())
    total = max(1, sum(pooled[present[0]]))
    frac = {n: [100.0 * (p[i] if i < len(p) else 0) / total for i in range(size)] for n, p in pooled.items()}
    classes = list(range(size))
    if size > MAX_DESTINATIONS:
        ranked = sorted(classes, key=lambda c: -max(f[c] for f in frac.values()))
        keep = set(ranked[:MAX_DESTINATIONS]) | set(v.forget)
        classes = [c for c in classes if c in keep]
    png = plots.grouped_bars([v.name(c) for c in classes], {n: [frac[n][c] for c in classes] for n in present},
                             marked=[c in v.forget for c in classes], ylabel="% of forget-class samples",
                             ylim=(0, 110), names=v.series_names)
    many = " (pooled over the forget classes)" if len(v.forget) > 1 else ""
    caption = (f"Predicted class of the {total} forget-class test samples{many}: "
               + ", ".join(f"{v.series_names[n]}" for n in present) + ". The forget class itself in red."
               + (" Only the most frequent destinations are shown." if size > MAX_DESTINATIONS else ""))
    rows = []
    for n in present:
        top = sorted(range(size), key=lambda c: -frac[n][c])[:4]
        rows.append([_e(v.series_names[n])] + [f"{_e(v.label(c))}: {frac[n][c]:.1f}%" if frac[n][c] > 0 else ""
                                               for c in top])
    table = _table(["model", "1st", "2nd", "3rd", "4th"], rows)
    return _img(png, "predicted classes of forget-class samples", caption), table


def _per_class_table(v: _View) -> str:
    pm = {int(k): a for k, a in v.model["per_class_accuracy"].items()}
    po = {int(k): a for k, a in v.original["per_class_accuracy"].items()} if v.original is not None else {}
    headers = ["class", "role"] + (["original"] if po else []) + [v.model_name] + (["change"] if po else [])
    rows, cls = [], []
    for c in sorted(set(pm) | set(po)):
        r = [_e(v.label(c)), "forget" if c in v.forget else "retain"]
        if po:
            r.append(_pct(po.get(c)))
        r.append(_pct(pm.get(c)))
        if po:
            r.append(_pts(pm[c] - po[c]) if c in pm and c in po else "-")
        rows.append(r)
        cls.append("forget" if c in v.forget else "")
    return _table(headers, rows, numeric=list(range(2, len(headers))), row_classes=cls)


# ---------------------------------------------------------------------------------------------- the page
def render_html(report: dict, title: str | None = None) -> str:
    """The whole page for a forget or evaluate report dict (ForgetResult/EvaluateResult.to_dict())."""
    plots.require_matplotlib()
    v = _View(report)
    confusion_fig, confusion_table = _confusion_figure(v)
    title = title or f"onnx-damp {v.kind} report: forget {v.forget_label}"
    cards = [
        ("Per-class accuracy" + (", before and after" if v.original is not None else ""), _accuracy_figure(v),
         "wide"),
        ("Edit strength (alpha) and separability per layer", _alpha_figure(v), ""),
        ("Per-layer CKA to the retrained reference", _cka_figure(v), ""),
        ("Where the forget-class samples go", confusion_fig + confusion_table, "wide"),
    ]
    figures = "".join(f'<section class="card {c}"><h3>{_e(h)}</h3>{body}</section>' for h, body, c in cards)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{CSS}</style></head>
<body><main>
{_header(v)}
<h2>Summary</h2>
<div class="grid">
<section class="card wide"><h3>Accuracy</h3>{_summary_table(v)}</section>
<section class="card"><h3>Gates</h3>{_gates_table(v)}</section>
<section class="card"><h3>Verification</h3>{_verification_table(v)}</section>
</div>
<h2>Plots</h2>
<div class="grid">{figures}</div>
<h2>Per layer</h2>
<section class="card">{_layers_table(v)}</section>
<h2>Per class</h2>
<section class="card">{_per_class_table(v)}</section>
<p class="note">Made by onnx-damp {_e(report.get("version", ""))}. Definitions of every metric: docs/metrics.md.</p>
</main></body></html>
"""


def check_html_path(path: str | os.PathLike, *others) -> None:
    """Refuse an --html path that is one of the command's inputs or outputs, or whose folder is not writable."""
    from onnx_damp.errors import DampError

    target = Path(path)
    if target.is_dir():
        raise DampError(f"--html {os.fspath(path)} is a folder; give a file name such as report.html")
    for other in others:
        if other is None:
            continue
        if _same_file(target, Path(other)):
            raise DampError(f"--html {os.fspath(path)} is the same file as {os.fspath(other)}; "
                            "give another name for the report")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise DampError(f"cannot write the HTML report: folder {folder} does not exist or is not writable")


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.abspath(a) == os.path.abspath(b)


def write_html(result, path: str | os.PathLike, title: str | None = None) -> Path:
    """Write the HTML report of a ForgetResult/EvaluateResult (or its to_dict()) to path, atomically."""
    from onnx_damp.fileio import atomic_write

    report = result if isinstance(result, dict) else result.to_dict()
    page = render_html(report, title)
    return atomic_write(path, lambda f: f.write(page))
