"""The forget pipeline: hold out part of the calibration data, collect statistics on the rest, plan and
apply candidate DAMP edits, keep the best on the held-out images, then the readout stage.

1. Split: every fifth calibration image of each class (at most 256) is held out (selection.split_holdout);
   statistics come from the rest, every choice below from the held-out images, which built nothing.
2. Representation edit (DAMP): one statistics pass; candidate plans from the same statistics (with and
   without extra directions; weaker ones only when neither keeps the retain guards, stronger ones, up to a
   full projection, only when the best within the guards leaves held-out forget accuracy above the target);
   each is applied to a copy and scored on the held-out images; selection.pick keeps one. Further passes (max_passes > 1)
   re-collect statistics on the kept model and are kept only when the held-out images say they are better.
3. Readout stage (readout.py): the last operator's bias is lowered for the forget channels by a shift
   measured on the held-out images; it never lowers a retain prediction.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_damp.method import plan as dm
from onnx_damp.method import readout as ro
from onnx_damp.data.dataset import Dataset, subset
from onnx_damp.ops.base import EditableOp
from onnx_damp.ops.registry import adapter
from onnx_damp.runtime.instrument import default_opset
from onnx_damp.runtime.predict import (FedWeights, SessionPool, pooled, predict, prediction_session,
                                       weight_fed_session)
from onnx_damp.runtime.session import serialise_whole
from onnx_damp.verify.metrics import per_class_accuracy
from onnx_damp.method.selection import (HeldOutScore, RetainGuard, forget_only, pick, retain_order, score,
                                          split_holdout, top_margin)
from onnx_damp.options import MethodOptions, RunOptions
from onnx_damp.progress import QUIET, Phases
from onnx_damp.stats.collector import Collector, collect
from onnx_damp.stats.statistics import Statistics
from onnx_damp.ops.weights import (FLOAT_TYPES, BiasRef, GraphIndex, index_graph, output_bias, shift_bias,
                                   weight_ref)

# (name, extra directions, alpha scale; see _scaled): tried in this order; the weaker ones only when no
# full one keeps the retain guards on the held-out images, the stronger ones only when the best one within
# the guards still leaves held-out forget accuracy above the target (each stops at the first that breaks
# the guards or reaches the target)
CANDIDATES = (("damp", True, 1.0), ("damp, residual directions only", False, 1.0))
STRONGER_CANDIDATES = (("damp, stronger", True, 2.0), ("damp, full strength", True, float("inf")))
FALLBACK_CANDIDATES = (("damp, half strength", True, 0.5), ("damp, residual directions only, half strength", False, 0.5),
                       ("damp, quarter strength", True, 0.25), ("damp, eighth strength", True, 0.125))
PROBE_SHIFT = 1.0  # bias units of the probe that measures how the output's scores follow the bias
READOUT_TRIES = 8  # the readout's shift is doubled at most this many times less one (see _widened)


@dataclass
class PassRecord:
    plans: list[dm.LayerPlan]
    calib_forget_accuracy: float | None   # on the held-out calibration images, after this pass (None: no data)
    calib_retain_accuracy: float | None
    candidate: str = "damp"               # which candidate plan was kept
    candidates: list[dict] = field(default_factory=list)  # every candidate's held-out score

    def to_dict(self) -> dict:
        return {"calibration_forget_accuracy": self.calib_forget_accuracy,
                "calibration_retain_accuracy": self.calib_retain_accuracy,
                "candidate": self.candidate, "candidates": self.candidates,
                "layers": [p.to_dict() for p in self.plans]}


@dataclass
class ReadoutRecord:
    """What the readout stage did at the last operator, and what the held-out images said."""

    applied: bool
    reason: str = ""
    node: str = ""
    bias: str = ""
    classes: list[int] = field(default_factory=list)
    shift: list[float] = field(default_factory=list)        # change of each forget channel's output (op units)
    score_shift: list[float] = field(default_factory=list)  # t_c, in log-score units
    gain: list[float] = field(default_factory=list)         # log-score units per unit of bias
    before: HeldOutScore | None = None                     # held-out, after the representation edit alone
    after: HeldOutScore | None = None                      # held-out, after the readout stage
    model: "onnx.ModelProto | None" = field(default=None, repr=False)     # the edited model (not serialised)
    outputs: "np.ndarray | None" = field(default=None, repr=False)       # its output rows on the held-out images

    def to_dict(self) -> dict:
        return {"applied": self.applied, "reason": self.reason, "node": self.node, "bias": self.bias,
                "classes": self.classes, "shift": self.shift, "score_shift": self.score_shift, "gain": self.gain,
                "heldout_before": self.before.to_dict() if self.before else None,
                "heldout_after": self.after.to_dict() if self.after else None}


@dataclass
class EditOutcome:
    model: onnx.ModelProto
    passes: list[PassRecord] = field(default_factory=list)
    first_stats: Statistics | None = None
    calib_outputs: "np.ndarray | None" = None     # the final model's output rows on calib (reused for validation)
    original_outputs: "np.ndarray | None" = None  # the unedited model's output rows on calib
    representation: "onnx.ModelProto | None" = None  # the model after the representation edit, before the readout
    readout: ReadoutRecord | None = None
    heldout: np.ndarray | None = None             # indices of the held-out calibration images
    heldout_score: HeldOutScore | None = None     # the returned model on them
    heldout_outputs: "dict[str, np.ndarray] | None" = None  # output rows there: "original" and "model" (returned)
    notes: list[str] = field(default_factory=list)


def damp_edit(proto: onnx.ModelProto, ops: list[EditableOp], calib: Dataset | None, forget: Sequence[int],
              retain: Sequence[int], method: MethodOptions = MethodOptions(), run: RunOptions = RunOptions(), *,
              first_stats: Statistics | None = None, phases: Phases = QUIET,
              collector: Collector = collect, outputs: bool = True,
              sessions: SessionPool | None = None, index: GraphIndex | None = None) -> EditOutcome:
    """Edit a copy of proto: DAMP representation edit chosen on held-out calibration images, then readout.

    method: what the edit does (options.MethodOptions: extra_directions=False and candidates=False fix the
    plan, readout=False returns the representation edit alone as the paper has it, holdout=0 decides on the
    images that built the statistics); run: batch size, device, input and output names.
    first_stats: statistics of proto (e.g. merged shards) for pass 1; calib may then be None, which means
    exactly one pass of the default plan and no readout stage (nothing to check it on). phases: one
    progress bar per phase (progress.Phases; statistics, held-out check, readout, calibration outputs). collector:
    stats.collector.collect or another Collector (the Ray backend). outputs=False skips predicting the whole
    calibration set with the original and the edited model. sessions: where proto's prediction session is
    kept (runtime.predict.SessionPool; the caller may have made it already). index: proto's graph index
    (ops.graph.GraphScan.index), copied for the first pass's candidates rather than made again.
    """
    feature_mode, extra_directions, extra_bar = method.feature_mode, method.extra_directions, method.extra_bar
    max_passes, target_forget_accuracy = method.max_passes, method.target_forget_accuracy
    readout, holdout, candidates = method.readout, method.holdout, method.candidates
    device, input_name, output_name = run.device, run.input_name, run.output_name
    forget, retain = list(forget), list(retain)
    outcome = EditOutcome(proto)
    if calib is None:
        plans = dm.plan(ops, first_stats, forget, retain, extra_directions, extra_bar, layer_probe=method.layer_probe)
        edited = _applied(proto, plans)
        outcome.passes.append(PassRecord(plans, None, None))
        outcome.model = outcome.representation = edited
        outcome.first_stats = first_stats
        return outcome
    rk = dict(batch_size=run.batch_size, device=device, feature_mode=feature_mode, input_name=input_name,
              collector=collector, output_name=output_name)
    fit_idx, held_idx = split_holdout(calib.y, holdout)
    if len(held_idx) == 0:
        held_idx = fit_idx  # too few images to hold any out: decide on the fit images, and say so
        outcome.notes.append("too few calibration images per class to hold any out: choices are judged on the "
                             "images that built the statistics")
    elif first_stats is not None:
        outcome.notes.append("statistics were given: the held-out calibration images may be part of them")
    outcome.heldout = held_idx
    fit, held = (subset(calib, fit_idx) if len(fit_idx) < len(calib) else calib), subset(calib, held_idx)
    if first_stats is not None:
        stats = first_stats
    else:
        with phases("statistics", len(fit)) as bar:
            stats = _collect(proto, ops, fit, forget, None, progress=bar, **rk)
    outcome.first_stats = stats
    n_cands = len(CANDIDATES) if candidates else 1
    extras = tuple(dict.fromkeys(c[1] for c in CANDIDATES)) if candidates else (extra_directions,)
    with phases("planning", len(ops)) as bar:  # every candidate's plan, each layer's moments computed once
        plans = dm.plan_variants(ops, stats, forget, retain, extras, extra_bar, progress=bar,
                                 layer_probe=method.layer_probe)
    with phases("held-out check", len(held) * (1 + n_cands)) as bar:
        orig_held = predict(proto, held, run.batch_size, device, input_name, output_name, bar,
                            session=pooled(sessions, proto, held, input_name, device))
        base = per_class_accuracy(orig_held.argmax(1), held.y)
        rows = head_rows(ops[-1], forget, orig_held.shape[1]) if method.head_rows else None
        orig_pred, orig_margin = orig_held.argmax(1), top_margin(orig_held)
        rep_model, best, rec, rep_out = _best_candidate(proto, ops, stats, held, forget, retain, base,
                                                        extra_directions, extra_bar, candidates, rk,
                                                        target_forget_accuracy, bar, rows, plans,
                                                        original_pred=orig_pred, original_margin=orig_margin,
                                                        layer_probe=method.layer_probe, like=index)
    outcome.passes.append(rec)
    for k in range(2, max_passes + 1):
        if best.forget_accuracy <= target_forget_accuracy:
            break
        with phases(f"statistics, pass {k}", len(fit)) as bar:
            st = _collect(rep_model, ops, fit, forget, stats.token_layouts, progress=bar, **rk)
        with phases(f"planning, pass {k}", len(ops)) as bar:
            plans = dm.plan_variants(ops, st, forget, retain, extras, extra_bar, progress=bar,
                                     layer_probe=method.layer_probe)
        with phases(f"held-out check, pass {k}", len(held) * n_cands) as bar:
            model, sc, r, out = _best_candidate(rep_model, ops, st, held, forget, retain, base, extra_directions,
                                                extra_bar, candidates, rk, target_forget_accuracy, bar, rows, plans,
                                                original_pred=orig_pred, original_margin=orig_margin,
                                                layer_probe=method.layer_probe)
        # kept when the held-out images prefer it, or rate it as good (a tie within the guards: a further pass
        # removes more of the class from the features, which the held-out accuracy alone cannot see)
        better = pick([best, sc]) == 1 or (sc.within_guards() and sc.forget_accuracy <= best.forget_accuracy)
        if not better:
            outcome.notes.append(f"pass {len(outcome.passes) + 1} was not kept: held-out forget accuracy "
                                 f"{100 * sc.forget_accuracy:.1f}% (kept {100 * best.forget_accuracy:.1f}%), "
                                 f"worst retain-class drop {100 * sc.worst[1]:.1f} points "
                                 f"(kept {100 * best.worst[1]:.1f})")
            break
        outcome.passes.append(r)
        rep_model, best, rep_out = model, sc, out
    outcome.representation, outcome.model = rep_model, rep_model
    outcome.heldout_score = best
    if readout:
        with phases("readout", int(np.isin(held.y, forget).sum()) + len(held)) as bar:
            outcome.readout = _readout(rep_model, rep_out, ops[-1], held, forget, retain, base, best,
                                       target_forget_accuracy, device, input_name, output_name, bar,
                                       batch_size=run.batch_size)
        if outcome.readout.applied:
            outcome.model, rep_out = outcome.readout.model, outcome.readout.outputs
            outcome.heldout_score = outcome.readout.after
    outcome.heldout_outputs = {"original": orig_held, "model": rep_out}
    if not outputs:
        return outcome
    fit_known = stats.outputs if first_stats is None else None
    with phases("calibration outputs", len(fit_idx) * (1 + int(fit_known is None))) as bar:
        outcome.original_outputs = _all_outputs(proto, calib, fit_idx, held_idx, fit_known, orig_held, device,
                                                input_name, output_name, bar, sessions, run.batch_size)
        outcome.calib_outputs = _all_outputs(outcome.model, calib, fit_idx, held_idx, None, rep_out, device,
                                             input_name, output_name, bar, batch_size=run.batch_size)
    return outcome


def _collect(model, ops, data, forget, layouts, *, batch_size, device, feature_mode, input_name, collector,
             progress=None,
             output_name) -> Statistics:
    return collector(model, ops, data, forget, batch_size, device, feature_mode, input_name, progress, layouts,
                     outputs=True, output=output_name)


def _applied(model: onnx.ModelProto, plans: list[dm.LayerPlan], like: GraphIndex | None = None) -> onnx.ModelProto:
    """A copy of model with plans applied; like: model's index (reused for each copy, dm.apply)."""
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    dm.apply(edited, plans, like)
    return edited


def head_rows(head: EditableOp, forget: Sequence[int], n_outputs: int) -> "tuple[int, ...] | None":
    """The forget classes as rows of the last operator's weight, when that operator is a Gemm/MatMul whose
    outputs are the model's class scores (one per output column); else None (every row is edited).

    The paper's W (I - alpha Q Q^T) on the head moves every class's logit by -alpha W_c Q Q^T x; on the
    forget rows only, retain logits are left to what the earlier layers' edits do (docs/method.md)."""
    if not adapter(head).chunkable or adapter(head).output_channels(head) != n_outputs:
        return None
    return tuple(int(c) for c in forget)


def _best_candidate(model, ops, stats, held, forget, retain, base, extra_directions, extra_bar, use_candidates,
                    run, target, bar, rows=None, plans=None, lazy: bool = True, first: tuple | None = None,
                    original_pred: np.ndarray | None = None, layer_probe: bool = True, share_sessions: bool = True,
                    original_margin: np.ndarray | None = None, like: GraphIndex | None = None
                    ) -> tuple[onnx.ModelProto, HeldOutScore, PassRecord, np.ndarray]:
    """Plan every candidate from the same statistics, score each on the held-out images, keep one (and its
    output rows there). bar: the held-out check's progress, sized for the first candidates (it grows when
    weaker or stronger ones are tried); plans: plans already made, by their extra-directions flag.
    lazy: the first candidates all run on the held-out forget images before any runs on the retain images,
    which then run in order of forget accuracy until one is within the guards (the same pick; False: one
    candidate after the other, as a reference). first: the first candidates (default CANDIDATES).
    original_pred: the original's predicted class per held-out image; given, a candidate's retain images run in
    chunks (selection.retain_order) and stop once the guards are sure to fail (selection.RetainGuard): the same
    pick, since such a candidate is never within the guards (when none is, the stopped ones are finished: the
    images they did not run, no image twice). Not with a single candidate (use_candidates False): nothing to choose.
    original_margin: the original's top score less its second per held-out image (selection.top_margin): the
    retain images the original gets right then run from the smallest margin up, so that a candidate bound to
    break the guards is stopped sooner (the same scores and pick).
    layer_probe: plans made here compute the whole-space layer separability (MethodOptions.layer_probe).
    share_sessions: candidates that edit only MatMul/Gemm weights of their own (_fed_weights) run on one session
    fed each candidate's weights, on the CPU (False: a session per candidate). like: model's graph index, if made.
    """
    cands = (first or CANDIDATES) if use_candidates else (("damp", extra_directions, 1.0),)
    tried: list[tuple[str, list, onnx.ModelProto, HeldOutScore, np.ndarray]] = []
    plans_by_extra: dict[bool, list[dm.LayerPlan]] = dict(plans or {})  # planned already (the planning phase)

    fidx = np.flatnonzero(np.isin(held.y, forget))
    ridx = np.flatnonzero(~np.isin(held.y, forget))
    order = ridx if original_pred is None else retain_order(held.y, ridx, original_pred, original_margin)

    def edit(extra, scale) -> tuple[list, onnx.ModelProto]:
        """One candidate's plans (planned now or reused) and the model they edit."""
        if extra not in plans_by_extra:
            like = next(iter(plans_by_extra.values()), None)  # same statistics: layer separabilities reused
            plans_by_extra[extra] = dm.plan(ops, stats, forget, retain, extra, extra_bar, like,
                                            layer_probe=layer_probe)
        plans = [dataclasses.replace(p, alpha=_scaled(p.alpha, scale), rows=rows if p.op is ops[-1] else None)
                 for p in plans_by_extra[extra]]
        return plans, _applied(model, plans, index())

    @functools.cache
    def index() -> GraphIndex:
        """model's graph index (like, else made on the first candidate), copied for each (dm.apply's like)."""
        return like if like is not None else index_graph(model.graph)

    shared: dict = {}  # "fed": node -> the initializer a fed session may take its weight from; "sess": that session

    def session_of(edited: onnx.ModelProto, plans: list[dm.LayerPlan]):
        """edited's prediction session: the shared one fed edited's weights where every operator plans edit has
        a weight it can be fed (_fed_weights), else a session of its own."""
        if "fed" not in shared:
            # CPU only: on CUDA the fed weights would be copied to the device on every run
            shared["fed"] = _fed_weights(model, index(), ops) if share_sessions and run["device"] == "cpu" else {}
        fed = shared["fed"]
        edits = [p.op.node_name for p in plans if p.rank and p.alpha]
        if not fed or not all(n in fed for n in edits) or any(p.own_copy for p in plans):  # an own copy: not fed
            return prediction_session(edited, held, run["input_name"], run["device"])
        if "sess" not in shared:
            shared["sess"] = weight_fed_session(model, list(fed.values()), held, run["input_name"], run["device"])
        inits = {t.name: t for t in edited.graph.initializer}
        return FedWeights(shared["sess"], {n: numpy_helper.to_array(inits[n]) for n in fed.values()})

    def held_rows(edited: onnx.ModelProto, indices, session) -> np.ndarray:
        """edited's output rows on the held-out images at indices (None: all), EARLY_CHUNK images a run at most
        whatever the split's size (the retain chunks' size): a candidate session's buffers are sized by its
        largest batch, and two candidates' sessions may be alive at once, so this keeps memory flat in the data
        (with 16x the CIFAR-10 sample's images, forget images ran 128 at a time: peak RSS 1.32x that of 1x)."""
        return predict(edited, held, min(run["batch_size"], EARLY_CHUNK), run["device"], run["input_name"],
                       run["output_name"], bar, indices=indices, session=session)

    def forget_first(c) -> dict:
        """Plan, apply and run one candidate on the held-out forget images only (its session kept)."""
        name, extra, scale = c
        plans, edited = edit(extra, scale)
        sess = session_of(edited, plans)
        f_out = held_rows(edited, fidx, sess)
        return {"name": name, "plans": plans, "edited": edited, "sess": sess, "f_out": f_out,
                "f_acc": float(np.mean(f_out.argmax(1) == held.y[fidx]))}

    def lean(e: dict) -> dict:
        """e without its session where the model is large (made again if its retain images run), so that two
        candidates' sessions of a large model are never alive at once."""
        if not serialise_whole(e["edited"]):
            e["sess"] = None
        return e

    def retain_too(e: dict) -> None:
        """Run e's retain images as well and score it whole; with original_pred (and a choice to make), in chunks
        that stop once the guards are sure to fail (e then gets the guard's rejected score, and its output rows
        so far: the forget images and the first score.retain_run images of order)."""
        out = np.zeros((len(held), e["f_out"].shape[1]))
        out[fidx] = e["f_out"]
        sess = e["sess"] or session_of(e["edited"], e["plans"])
        guard = RetainGuard(held.y[ridx], base) if original_pred is not None and use_candidates else None
        for chunk in _chunks(order, guard is not None):
            out[chunk] = held_rows(e["edited"], chunk, sess)
            if guard is None:
                continue
            guard.add(held.y[chunk], out[chunk].argmax(1))
            if guard.breached() and guard.run < len(order):
                bar.grow(guard.run - len(order))  # the retain images not run
                e["score"], e["out"] = guard.rejected_score(e["f_acc"]), out
                return
        e["score"], e["out"] = score(out.argmax(1), held.y, forget, base), out

    def record(e: dict) -> None:
        """Add e to tried: scored whole, or on the forget images only (it cannot be picked)."""
        sc = e["score"] if "score" in e else forget_only(e["f_acc"])
        tried.append((e["name"], e["plans"], e["edited"], sc, e.get("out")))

    def attempt(name, extra, scale, beat: float | None = None):
        """Plan (or reuse), apply and score one candidate. beat: the lowest forget accuracy of a candidate
        already within the guards; a candidate that does not go below it on the forget images cannot be
        picked, and its retain images are not run."""
        bar.grow(max(0, bar.done + len(held) - bar.total))  # a candidate beyond those planned
        if not len(fidx) or not len(ridx) or (beat is None and original_pred is None):
            plans, edited = edit(extra, scale)
            out = held_rows(edited, None, session_of(edited, plans))
            tried.append((name, plans, edited, score(out.argmax(1), held.y, forget, base), out))
            return
        e = forget_first((name, extra, scale))
        if beat is not None and e["f_acc"] >= beat:
            bar.grow(-len(ridx))
        else:
            retain_too(e)
        e["sess"] = None
        record(e)

    def best_within() -> float | None:
        accs = [t[3].forget_accuracy for t in tried if t[3].within_guards()]
        return min(accs) if accs else None

    if lazy and len(cands) > 1 and len(fidx) and len(ridx):
        # Every first candidate on the forget images, then the retain images in order of forget accuracy (the
        # earlier on ties) until one is within the guards: the pick is the one scoring them all would make
        # (lowest forget accuracy within the guards, earlier on ties), and the others' retain images are not run.
        entries = [lean(forget_first(cands[0]))]
        if entries[0]["f_acc"] == 0:
            retain_too(entries[0])
        if "score" not in entries[0] or not entries[0]["score"].within_guards():
            entries += [lean(forget_first(c)) for c in cands[1:]]
            for e in sorted(entries, key=lambda e: (e["f_acc"], entries.index(e))):
                if "score" not in e:
                    retain_too(e)
                if e["score"].within_guards():
                    break
        for e in entries:
            e["sess"] = None  # released before any later candidate's session is made
            record(e)
        bar.grow(bar.done - bar.total)  # images planned and not run (retain images, candidates not needed)
    else:
        for c in cands:
            attempt(*c, beat=best_within())
            if tried[-1][3].within_guards() and tried[-1][3].forget_accuracy == 0:
                bar.grow(bar.done - bar.total)  # the rest was planned and is not needed
                break  # nothing later can be picked over it (pick: lowest forget accuracy, earlier wins ties)
    if use_candidates and not any(t[3].within_guards() for t in tried):
        for c in FALLBACK_CANDIDATES:
            attempt(*c)
            if tried[-1][3].within_guards():
                break
    elif use_candidates and tried[pick([t[3] for t in tried])][3].forget_accuracy > target:
        for c in STRONGER_CANDIDATES:  # the held-out images still read the class: a stronger edit, if they allow it
            attempt(*c, beat=best_within())  # one that does not lower forget accuracy ends the search unscored
            if not tried[-1][3].within_guards() or tried[-1][3].forget_accuracy <= target:
                break
    if not any(t[3].within_guards() for t in tried):  # pick goes by the full drops: the stopped ones are finished
        for i, (n_, p_, ed, sc_, out) in enumerate(tried):
            if sc_.rejected:
                rest = order[sc_.retain_run:]
                bar.grow(len(rest))
                out[rest] = held_rows(ed, rest, session_of(ed, p_))
                tried[i] = (n_, p_, ed, score(out.argmax(1), held.y, forget, base), out)
    k = pick([t[3] for t in tried])
    name, plans, edited, sc, out = tried[k]
    rec = PassRecord(plans, sc.forget_accuracy, sc.retain_accuracy, name,
                     [{"candidate": t[0], **t[3].to_dict()} for t in tried])
    return edited, sc, rec, out


def _fed_weights(model: onnx.ModelProto, gi: GraphIndex, ops: list[EditableOp]) -> dict[str, str]:
    """{node: initializer} of the operators whose weight one session can be fed for every candidate edit
    (runtime.predict.weight_fed_session): MatMul and Gemm nodes whose weight is a float initializer of their own
    (no shared source, no quantised weight, no Constant node), in a model small enough to keep in memory
    (session.serialise_whole). A fed Conv weight would lose onnxruntime's blocked layout (the MNIST CNN ran 2x
    slower); a fed MatMul/Gemm weight runs as fast (the ViT samples), and their candidates' outputs are the same."""
    if not serialise_whole(model):
        return {}
    fed = {}
    for op in ops:
        if op.op_type not in ("MatMul", "Gemm"):
            continue
        ref = weight_ref(gi, op)
        if (ref.constant_node is None and ref.dequant is None and ref.exclusive
                and ref.source_dtype in FLOAT_TYPES):
            fed[op.node_name] = ref.source
    return fed


# retain images per run while a candidate may still be stopped early: one batch size for every chunk but the last
# (each new batch size costs a session 30-40 ms more on its first run at it, on the MNIST CNN)
EARLY_CHUNK = 64


def _chunks(order: np.ndarray, early: bool) -> list[np.ndarray]:
    """order in one piece, or (early) EARLY_CHUNK images at a time."""
    if not early:
        return [order]
    return [order[i:i + EARLY_CHUNK] for i in range(0, len(order), EARLY_CHUNK)]


def _scaled(alpha: float, scale: float) -> float:
    """alpha * scale for scale <= 1; for scale > 1, the gap to a full projection shrunk: 1 - (1 - alpha) / scale."""
    return alpha * scale if scale <= 1 else 1.0 - (1.0 - alpha) / scale


def _readout(model: onnx.ModelProto, out: np.ndarray, head: EditableOp, held: Dataset, forget: list[int],
             retain: list[int], base: dict[int, float], before: HeldOutScore, target: float, device, input_name,
             output_name, bar: Callable[[int], None] | None = None, analytic: bool = True,
             batch_size: int = 256) -> ReadoutRecord:
    """Lower the forget channels of the last operator's bias by the shift readout.readout_shift measures.

    out: model's output rows on the held-out images (from its candidate's score). bar: progress (a Progress,
    sized for the probe and one try; it grows with each further try). analytic: where the output's rows after
    a bias change follow from out (_output_tail), compute them instead of running the model (False: run).
    batch_size: images per run where the model runs."""
    gi = index_graph(model.graph)
    ref = output_bias(gi, head)
    if isinstance(ref, str):
        return ReadoutRecord(False, ref, head.node_name, before=before)
    if out.shape[1] != ref.channels:
        return ReadoutRecord(False, f"the last operator {head.node_name} has {ref.channels} output channels but the "
                                    f"model output has {out.shape[1]} columns", head.node_name, ref.name, before=before)
    fmask = np.isin(held.y, forget)
    if not fmask.any():
        return ReadoutRecord(False, "no held-out forget images", head.node_name, ref.name, before=before)
    m = ro.forget_margins(ro.log_scores(out), forget, retain)
    t = ro.class_shifts(m, held.y, forget, target)
    fidx = np.flatnonzero(fmask)
    lowered = np.full(len(forget), PROBE_SHIFT)
    tail = _output_tail(model, gi, ref, output_name) if analytic else None
    probe_out = None if tail is None else ro.shifted_outputs(out[fidx], forget, lowered, tail)
    if probe_out is not None:  # the output's rows after the change follow from those before: no run
        if bar is not None:
            bar(len(fidx))
    else:
        probe_out = predict(_shifted(model, ref, forget, lowered), held, batch_size, device, input_name, output_name,
                            bar, indices=fidx)
    m_probe = ro.forget_margins(ro.log_scores(probe_out), forget, retain)
    gain = ro.margin_gain(m[fmask], m_probe, PROBE_SHIFT)
    rec = ReadoutRecord(False, "", head.node_name, ref.name, list(forget), score_shift=t.tolist(),
                        gain=gain.tolist(), before=before)
    if np.any(gain <= 1e-6):
        rec.reason = (f"lowering the bias of {head.node_name} does not lower the output's score of class(es) "
                      f"{[c for c, g in zip(forget, gain) if g <= 1e-6]} (gain {np.round(gain, 4).tolist()})")
        return rec
    edited, edited_out, after, shift = _widened(model, ref, forget, t / gain, held, base, device, input_name,
                                                output_name, bar, out=out if tail else None, tail=tail,
                                                batch_size=batch_size)
    if after.mean_drop > before.mean_drop + 1e-9 or after.worst[1] > before.worst[1] + 1e-9:
        rec.reason = (f"lowering the forget channels of {head.node_name} lowered retain accuracy on the held-out "
                      "images: the output is not a per-channel increasing function of that operator")
        return rec
    rec.applied, rec.shift, rec.after, rec.model, rec.outputs = True, (-shift).tolist(), after, edited, edited_out
    return rec


def _output_tail(model: onnx.ModelProto, gi: GraphIndex, ref: BiasRef, output_name: str | None) -> str | None:
    """What the model output read as scores is of the tensor ref's bias is added into, when its rows after a
    bias change follow from the rows before (readout.shifted_outputs): "identity" (that tensor itself),
    "softmax" or "logsoftmax" (of it, over the classes of a [N, classes] output, its only reader); float32/64
    output and bias. None otherwise (a run is needed). gi: the index of the model's graph (output_bias's)."""
    g = gi.graph
    out = next((o for o in g.output if o.name == output_name), None) if output_name else (g.output[0] if g.output
                                                                                         else None)
    bias = gi.inits.get(ref.name)
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)
    if out is None or out.type.tensor_type.elem_type not in floats or bias is None or bias.data_type not in floats:
        return None
    if out.name == ref.output:
        return "identity"
    node = g.node[gi.producer[out.name]] if out.name in gi.producer else None
    if node is None or node.op_type not in ("Softmax", "LogSoftmax") or node.domain not in ("", "ai.onnx"):
        return None
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1 if default_opset(model) < 13 else -1)
    rank = len(out.type.tensor_type.shape.dim) if out.type.tensor_type.HasField("shape") else 0
    if node.input[0] != ref.output or gi.uses[ref.output] != 1 or rank != 2 or axis not in (1, -1):
        return None
    return node.op_type.lower()


def _widened(model: onnx.ModelProto, ref: BiasRef, forget: list[int], shift: np.ndarray, held: Dataset,
             base: dict[int, float], device, input_name, output_name, bar=None, tries: int = READOUT_TRIES,
             out: np.ndarray | None = None, tail: str | None = None, batch_size: int = 256):
    """The bias shift, doubled while held-out forget images still read as a forget class (at most tries
    times): scores clipped by a saturated softmax can hide part of the margin, and with several forget
    classes an image can move from one lowered channel to another. Returns (model, its held-out outputs,
    score, shift) of the try with the lowest held-out forget accuracy (the smallest shift on ties).
    out, tail: the model's held-out rows and its output tail (_output_tail): each try's rows are computed
    from them (readout.shifted_outputs) where they can be, instead of run. batch_size: images per run."""
    best = None
    base_out = out
    for attempt in range(tries):
        edited = _shifted(model, ref, forget, shift)
        if attempt and bar is not None and hasattr(bar, "grow"):
            bar.grow(len(held))
        out = None if tail is None else ro.shifted_outputs(base_out, forget, shift, tail)
        if out is None:
            out = predict(edited, held, batch_size, device, input_name, output_name, bar)
        elif bar is not None:
            bar(len(held))
        sc = score(out.argmax(1), held.y, forget, base)
        if best is None or sc.forget_accuracy < best[2].forget_accuracy:
            best = (edited, out, sc, shift)
        if sc.forget_accuracy == 0:
            break
        shift = 2 * np.maximum(shift, 1e-3)
    return best


def _shifted(model: onnx.ModelProto, ref: BiasRef, forget: list[int], amount: np.ndarray) -> onnx.ModelProto:
    """A copy of model whose forget channels of the bias are lowered by amount (operator output units)."""
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    delta = np.zeros(ref.channels)
    delta[forget] = -np.asarray(amount, dtype=np.float64)
    shift_bias(edited, ref, delta)
    return edited


def _all_outputs(model, calib: Dataset, fit_idx, held_idx, fit_out, held_out, device, input_name,
                 output_name, bar: Callable[[int], None] | None = None,
                 sessions: SessionPool | None = None, batch_size: int = 256) -> np.ndarray:
    """Output rows of model on every calibration image, reusing rows already computed for fit or held-out.
    sessions: where model's prediction session is kept, if anywhere. batch_size: images per run."""
    session = None
    if fit_out is None or held_out is None:
        session = pooled(sessions, model, calib, input_name, device)
    if fit_out is None:
        fit_out = predict(model, calib, batch_size, device, input_name, output_name, bar, indices=fit_idx,
                          session=session)
    if held_out is None:
        same = len(held_idx) == len(fit_idx) and np.array_equal(held_idx, fit_idx)
        held_out = fit_out if same else predict(model, calib, batch_size, device, input_name, output_name, bar,
                                                indices=held_idx, session=session)
    full = np.zeros((len(calib), fit_out.shape[1]), dtype=np.float64)
    full[fit_idx] = fit_out
    full[held_idx] = held_out
    return full
