"""The Python API: every CLI command is one of these functions."""
from __future__ import annotations

import datetime
import functools
import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

from onnx_damp import __version__
from onnx_damp.data.dataset import Dataset, check_fits_model, subset
from onnx_damp.data.sources import as_dataset
from onnx_damp.data.preprocess import as_preprocess
from onnx_damp.errors import DampError
from onnx_damp.data.labels import metadata_names, read_labels, resolve_classes
from onnx_damp.ops.base import EditableOp
from onnx_damp.ops.graph import GraphScan, SkippedOp, no_editable_message, scan_graph
from onnx_damp.verify.metrics import (AccuracySummary, forget_confusion, js_divergence, kl_divergence, summarize, to_probabilities,
                      worst_retain_drop)
from onnx_damp.runtime.modelio import check_output_path, data_input, fits_in_proto, has_external_data, load_model, save_model_atomic, sha256_file
from onnx_damp.runtime.batching import free_batch_verdict
from onnx_damp.runtime.tokens import token_probe_note
from onnx_damp.runtime.predict import SessionPool, pooled, predict
from onnx_damp.progress import Phases, Progress
from onnx_damp.options import MethodOptions, RunOptions
from onnx_damp.runtime.blas import host_blas_limited
from onnx_damp.stats.collector import collect as collect_stats
from onnx_damp.stats.shards import merge
from onnx_damp.stats.statistics import Provenance, Statistics, proto_sha256
from onnx_damp.method.selection import HOLDOUT_FRACTION, MAX_CLASS_DROP, MAX_MEAN_DROP
from onnx_damp.method.pipeline import PassRecord, ReadoutRecord, damp_edit
from onnx_damp.verify.verdict import Verdict, verdict
from onnx_damp.verify.runs import Verification, feature_runs, gate_values, verify
from onnx_damp.verify.measures import GATE_SPECS, GateResult, Gates, check_gates, gates_dict, tool_gates
from onnx_damp.ops.weights import GraphIndex, index_graph, read_weight

ModelLike = "str | os.PathLike | onnx.ModelProto"
FEATURE_SAMPLES = 500  # images per side for the per-layer verification metrics (with eval data or a reference)


def _load(model) -> tuple[onnx.ModelProto, str | None]:
    if isinstance(model, onnx.ModelProto):
        return model, None
    return load_model(model), str(model)


# ----------------------------------------------------------------------------------------------- inspect
@dataclass
class InspectResult:
    editable: list[EditableOp]
    skipped: list[SkippedOp]
    ir_version: int
    opsets: dict[str, int]
    inputs: list[dict]
    outputs: list[dict]

    def to_dict(self) -> dict:
        return {"ir_version": self.ir_version, "opsets": self.opsets, "inputs": self.inputs,
                "outputs": self.outputs, "editable": [o.to_dict() for o in self.editable],
                "not_editable": [s.to_dict() for s in self.skipped]}


def _value_infos(values) -> list[dict]:
    out = []
    for v in values:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
        out.append({"name": v.name, "dtype": onnx.TensorProto.DataType.Name(t.elem_type), "shape": dims})
    return out


def inspect(model: ModelLike) -> InspectResult:
    """List every editable operator (and the ones that are not, with why)."""
    proto, _ = _load(model)
    scan = scan_graph(proto)
    inits = {i.name for i in proto.graph.initializer}
    return InspectResult(scan.editable, scan.skipped, int(proto.ir_version),
                         {imp.domain or "ai.onnx": int(imp.version) for imp in proto.opset_import},
                         _value_infos(i for i in proto.graph.input if i.name not in inits),
                         _value_infos(proto.graph.output))


# ----------------------------------------------------------------------------------------------- helpers
def _class_indices(names: list[str] | None, forget: Sequence, data: Dataset | None = None) -> list[int]:
    """Forget classes as indices: names (from _class_names) are looked up first, else the class folder names
    of an image folder."""
    names = names or getattr(data.x if data is not None else None, "class_names", None)
    return resolve_classes(forget, names)


def _run_checker(target: "onnx.ModelProto | str", original: "onnx.ModelProto | str | None" = None) -> str | None:
    """onnx.checker on the edited model (a proto, or the written file of one above protobuf's limit).

    The edit changes weight values only, so the edited model must pass every check the original passes:
    when the original fails the checker as well (nodes out of topological order, as keras2onnx writes
    them, which onnxruntime runs), the failure is the input's and is returned as a note. Otherwise a
    failure is a bug, not a user error: keep the traceback."""
    try:
        onnx.checker.check_model(target, full_check=False)
        return None
    except onnx.checker.ValidationError as exc:
        if original is not None:
            try:
                onnx.checker.check_model(original, full_check=False)
            except onnx.checker.ValidationError as orig_exc:
                first = str(orig_exc).strip().splitlines()[0] if str(orig_exc).strip() else type(orig_exc).__name__
                return f"the input model already fails onnx.checker ({first}); the edited one fails it the same way"
        raise RuntimeError(f"edited model fails onnx.checker: {exc}") from exc


def _class_names(proto: onnx.ModelProto, labels) -> list[str] | None:
    """Class names for mapping image folder names to indices (None: the model has none)."""
    return read_labels(labels) if labels is not None else metadata_names(proto)


def _check_labels(names: list[str] | None, labels, num_outputs: int) -> None:
    """A --labels file must name every output of the model, no more and no fewer."""
    if labels is not None and names is not None and len(names) != num_outputs:
        raise DampError(f"--labels {os.fspath(labels)} names {len(names)} classes but the model has {num_outputs} "
                        f"outputs; give one name per output, in output order")


LOW_ACCURACY = 0.5  # the original model below this on the data: the data are probably not what it expects
ALREADY_FORGOTTEN = 0.01  # the original's forget accuracy at or below this: nothing much to forget


def input_warnings(before: AccuracySummary, validated_on: str) -> list[str]:
    """Warnings about the data rather than the edit: the original model barely recognises them, or never
    recognised the forget class(es) in the first place (then FORGOTTEN says nothing about the edit)."""
    out = []
    if before.samples and before.forget_accuracy <= ALREADY_FORGOTTEN:
        out.append(f"the original model already gets {100 * before.forget_accuracy:.1f}% on the forget "
                   f"class(es) on the {validated_on}: there was nothing to forget there, so the verdict says "
                   f"nothing about the edit")
    acc = float(np.mean(list(before.per_class.values()))) if before.per_class else 1.0
    if acc < LOW_ACCURACY:
        out.append(f"the original model gets {100 * acc:.1f}% (mean per-class accuracy) on the {validated_on}: "
                   f"the data are probably not prepared as the model expects (wrong preprocessing or scaling, "
                   f"such as 0..255 against 0..1, is the usual cause), so the edit and its numbers mean little")
    return out


def _check_classes(forget: Sequence[int], data: Dataset, num_outputs: int, what: str) -> tuple[list[int], list[int]]:
    """Validate forget classes against the model's outputs and the data; return (forget, retain)."""
    return _check_present_classes(forget, set(data.classes.tolist()), num_outputs, what)


def _named(classes: Sequence[int], names: list[str] | None) -> str:
    """Classes as their names where known: "0 (T-shirt/top), 5 (Sandal)"."""
    return ", ".join(f"{c} ({names[c]})" if names and c < len(names) and names[c] != str(c) else str(c)
                     for c in classes)


def _check_present_classes(forget: Sequence[int], present: set[int], num_outputs: int,
                           what: str) -> tuple[list[int], list[int]]:
    """_check_classes for the classes present in data or statistics."""
    if not forget:
        raise DampError("no class to forget: give at least one --forget")
    f = sorted({int(c) for c in forget})
    bad = [c for c in f if c < 0 or c >= num_outputs]
    if bad:
        raise DampError(f"class(es) {bad} out of range: the model has {num_outputs} outputs (0..{num_outputs - 1})")
    too_big = sorted(c for c in present if c >= num_outputs)
    if too_big:
        raise DampError(f"{what} has labels {too_big[:5]} but the model has only {num_outputs} outputs")
    absent = [c for c in f if c not in present]
    if absent:
        raise DampError(f"class(es) {absent} to forget have no samples in {what}")
    retain = sorted(present - set(f))
    if not retain:
        raise DampError(f"forgetting every class present in {what} leaves nothing to retain")
    return f, retain


def _num_outputs(proto: onnx.ModelProto, data: Dataset, input_name, output_name, device,
                 pool: SessionPool | None = None) -> int:
    """Run the model on one sample: checks that the data fit its input and returns the number of classes.
    pool: where the session is kept for the job's later predictions with the same model."""
    check_fits_model(data, proto, input_name)  # images: the preprocessing's shape, before decoding any
    one = Dataset(data.x[:1], data.y[:1], data.source)
    sess = pooled(pool, proto, data, input_name, device)  # the data, not the one sample: a batch fixed at 1 is
    # checked for its symbolic-batch twin on a few rows, and the kept session serves the job's larger runs
    return int(predict(proto, one, 1, device, input_name, output_name, session=sess).shape[1])


def _check_gates_inputs(gates: Gates | None, has_original: bool, has_reference: bool, has_train: bool,
                        feature_samples: int, train_hint: str) -> None:
    """Refuse (exit code 2) a gate whose metric cannot be computed from the inputs given."""
    if feature_samples < 0:
        raise DampError("--feature-samples must be 0 or more")
    if gates is None:
        return
    for name, value in gates.active().items():
        if not np.isfinite(value):
            raise DampError(f"--{name.replace('_', '-')} must be a finite number")
    for name in ("max_retain_drop", "max_class_drop"):
        if getattr(gates, name) is not None and not has_original:
            raise DampError(f"{GATE_SPECS[name][2]} needs --original (the drop is measured against it)")
    if gates.min_cka_gain is not None:
        if not has_reference:
            raise DampError("--min-cka-gain needs --reference (a model retrained without the class(es))")
        if not has_original:
            raise DampError("--min-cka-gain needs --original (the gain is measured against it)")
        if feature_samples == 0:
            raise DampError("--min-cka-gain needs --feature-samples above 0")
    if gates.max_mia is not None and not has_train:
        raise DampError(f"--max-mia needs {train_hint}")


def _as_gates(gates) -> Gates | None:
    if gates is None or isinstance(gates, Gates):
        return gates
    if isinstance(gates, dict):
        unknown = set(gates) - set(GATE_SPECS)
        if unknown:
            raise DampError(f"unknown gate(s) {sorted(unknown)}; known: {sorted(GATE_SPECS)}")
        return Gates(**gates)
    raise DampError("gates must be a Gates object or a dict")


# ------------------------------------------------------------------------------------------------ forget
def total_relative_change(before: onnx.ModelProto, after: onnx.ModelProto, ops: list[EditableOp],
                          before_index: GraphIndex | None = None) -> dict[str, float]:
    """||W_after - W_before||_F / ||W_before||_F for each editable node, over all passes. before_index: before's
    graph index, where the caller has it (GraphScan.index)."""
    out = {}
    gi0, gi1 = before_index or index_graph(before.graph), index_graph(after.graph)
    for op in ops:
        w0 = read_weight(gi0, op).astype(np.float64)
        w1 = read_weight(gi1, op).astype(np.float64)
        out[op.node_name] = float(np.linalg.norm(w1 - w0) / max(np.linalg.norm(w0), 1e-300))
    return out


@dataclass
class ForgetResult:
    model: onnx.ModelProto
    forget: list[int]
    retain: list[int]
    passes: list[PassRecord]
    relative_change: dict[str, float]   # ||W_final - W|| / ||W|| per editable node
    before: AccuracySummary
    after: AccuracySummary
    validated_on: str
    calibration_samples: int
    feature_mode: str
    source_sha256: str | None
    written: list[str] = field(default_factory=list)
    not_editable: list[SkippedOp] = field(default_factory=list)
    verification: Verification = field(default_factory=Verification)
    reference_js: dict | None = None
    gates: list[GateResult] = field(default_factory=list)
    token_layouts: dict[str, str] = field(default_factory=dict)  # node -> where its class token was read
    class_names: list[str] | None = None     # from --labels or the model's metadata
    forget_confusion: dict | None = None     # metrics.forget_confusion of the validation predictions
    notes: list[str] = field(default_factory=list)  # e.g. why fewer passes could run
    statistics: dict | None = None  # with --stats: the shards merged for pass 1 and their provenance
    readout: "ReadoutRecord | None" = None  # the readout stage at the last operator (None: not run)
    stages: dict | None = None      # forget accuracy on the validation data after each stage
    heldout: dict | None = None     # the held-out calibration images: size and the returned edit's score
    warnings: list[str] = field(default_factory=list)  # bounds the held-out images say are not reached
    target_forget_accuracy: float = MethodOptions.target_forget_accuracy  # what the verdict holds it to
    source: str | None = None                # the input model's path (None: given in memory)
    reference_summary: AccuracySummary | None = None  # the retrained reference on the validation data

    @property
    def verdict(self) -> Verdict:
        """FORGOTTEN or not, on the validation data, with the retain change (verify/verdict.py)."""
        return verdict(self.after, self.before, self.target_forget_accuracy, self.validated_on)

    @property
    def passed(self) -> bool:
        """Whether every gate asked for holds (True when none was asked for)."""
        return all(g.passed for g in self.gates)

    def check_gates(self, gates: "Gates | dict | None") -> list[GateResult]:
        """Evaluate gates against this result's validation metrics (does not change self.gates)."""
        return check_gates(gate_values(self.after, self.before, self.verification), _as_gates(gates))

    def to_dict(self) -> dict:
        worst_c, worst_drop = worst_retain_drop(self.before, self.after)
        return {"tool": "onnx-damp", "version": __version__, "verdict": self.verdict.to_dict(),
                "forget_classes": self.forget,
                "retain_classes": self.retain, "feature_mode": self.feature_mode,
                "token_layouts": self.token_layouts, "calibration_samples": self.calibration_samples,
                "source_model": self.source, "source_sha256": self.source_sha256,
                "validated_on": self.validated_on, "outputs": self.written,
                "passes": [p.to_dict() for p in self.passes],
                "relative_change": self.relative_change,
                "not_editable": [s.to_dict() for s in self.not_editable],
                "before": self.before.to_dict(), "after": self.after.to_dict(),
                **({"reference": self.reference_summary.to_dict()} if self.reference_summary is not None else {}),
                "retain_accuracy_drop": self.before.retain_accuracy - self.after.retain_accuracy,
                "worst_retain_drop": {"class": worst_c, "drop": worst_drop},
                **({"reference_js": self.reference_js} if self.reference_js is not None else {}),
                "verification": self.verification.to_dict(), "gates": gates_dict(self.gates),
                "class_names": self.class_names, "forget_confusion": self.forget_confusion,
                **({"notes": self.notes} if self.notes else {}),
                **({"statistics": self.statistics} if self.statistics is not None else {}),
                "readout": self.readout.to_dict() if self.readout is not None else None,
                "stages": self.stages, "heldout": self.heldout, "warnings": self.warnings}


HISTORY_KEY = "onnx_damp.history"


def forget_history(proto: onnx.ModelProto) -> list[dict]:
    """The earlier onnx-damp requests recorded in a model's metadata (oldest first; [] for an unedited model).

    A model edited before the history was recorded has only onnx_damp.forget_classes: one entry from it."""
    meta = {p.key: p.value for p in proto.metadata_props}
    try:
        if HISTORY_KEY in meta:
            hist = json.loads(meta[HISTORY_KEY])
            return [h for h in hist if isinstance(h, dict) and isinstance(h.get("classes"), list)]
        if "onnx_damp.forget_classes" in meta:
            return [{"classes": json.loads(meta["onnx_damp.forget_classes"]),
                     "version": meta.get("onnx_damp.version", ""), "source_sha256": meta.get("onnx_damp.source_sha256", "")}]
    except (ValueError, TypeError):
        return []
    return []


def forgotten_before(proto: onnx.ModelProto) -> list[int]:
    """Every class an earlier onnx-damp request made the model forget."""
    return sorted({int(c) for h in forget_history(proto) for c in h["classes"] if isinstance(c, (int, float))})


def _record_metadata(proto: onnx.ModelProto, entries: dict[str, str]) -> None:
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key not in entries]
    del proto.metadata_props[:]
    for k, v in keep + list(entries.items()):
        e = proto.metadata_props.add()
        e.key, e.value = k, v


@host_blas_limited
def forget(model: ModelLike, data, forget: Sequence[int], output: str | os.PathLike | None = None,
           eval_data=None, batch_size: int = 128, device: str = "cpu", feature_mode: str = "auto",
           extra_directions: bool = True, input_name: str | None = None, output_name: str | None = None,
           max_passes: int = 1, target_forget_accuracy: float = 0.01, quiet: bool = True,
           reference: ModelLike | None = None, feature_samples: int | None = None,
           gates: "Gates | dict | None" = None, labels: str | os.PathLike | None = None,
           preprocess=None, stats: "Sequence[str | os.PathLike | Statistics] | None" = None, ray: bool = False,
           ray_address: str | None = None, extra_bar: str = "energy", readout: bool = True,
           holdout: float = HOLDOUT_FRACTION, candidates: bool = True, allow_missing_classes: bool = False,
           strict: bool = False, default_gates: bool = True, head_rows: bool = False,
           layer_probe: bool = True) -> ForgetResult:
    """Make model forget the given classes with DAMP; validate; optionally write the edited model.

    The method's keywords are the fields of options.MethodOptions, the run's those of options.RunOptions
    (the CLI takes its defaults from both). stats: statistics files from onnx_damp.collect / `onnx-damp
    collect` (or loaded Statistics), merged and used for pass 1; data (then optional) serves the later
    passes; without data exactly one pass runs and eval_data is needed to validate. ray / ray_address:
    collect on Ray (see stats/ray.py).

    Validation (on eval_data, else on the held-out calibration images, which built nothing) gives accuracies
    and the verification metrics of docs/metrics.md (membership inference only with eval_data; CKA only with a
    reference). feature_samples: images per side for the per-layer metrics; None: 500 with eval_data or a
    reference, else 0 (the calibration images are too few and too close to the edit to say more). gates
    (Gates or a dict of its fields) are checked on them: see ForgetResult.passed and .gates.
    data and eval_data: a Dataset, (x, y), an .npz, an image folder or a torchvision-format folder/file
    (see data.dataset.as_dataset); preprocess (Preprocess, dict or .json/.toml path) applies to the images.
    allow_missing_classes: accept calibration data that lack some of the model's classes (an error otherwise:
    a class with no prototype cannot be kept out of the forget directions). strict: warnings are errors.
    default_gates: the tool's own targets (forget accuracy at most target_forget_accuracy, mean retain drop at
    most 1 point, no retain class down more than 3) gate the result where gates leave a threshold unset;
    False checks only the gates given. layer_probe=False: each layer's whole-space separability (reported
    only, a d x d factorisation per wide layer) is not computed; the plans' layer_separability is None.
    """
    method = MethodOptions(feature_mode, extra_directions, max_passes, target_forget_accuracy, readout, holdout,
                           candidates, extra_bar, head_rows, layer_probe).check()
    run = RunOptions(batch_size, device, input_name, output_name, quiet, ray, ray_address).check()
    gates = _as_gates(gates)
    if default_gates:
        gates = tool_gates(gates, target_forget_accuracy)
    if feature_samples is None:
        feature_samples = FEATURE_SAMPLES if eval_data is not None or reference is not None else 0
    job = _prepare_forget(model, data, forget, output, eval_data, reference, feature_samples, gates, labels,
                          preprocess, stats, method, run, allow_missing_classes)
    outcome = _edit(job, method, run)
    notes = job.notes + outcome.notes + _stamp(job, outcome, method)
    result = _validate_edit(job, outcome, method, run, feature_samples, notes)
    result.warnings = input_warnings(result.before, result.validated_on) + job.warnings + result.warnings
    if strict and result.warnings:
        raise DampError(f"--strict: {result.warnings[0]}" + (f" (and {len(result.warnings) - 1} more warning(s))"
                                                              if len(result.warnings) > 1 else ""))
    if job.out_path is not None:
        with Phases(run.quiet)("writing", 1) as bar:  # the atomic write and the checker: a phase of its own
            _save(job, result)
            bar(1)
    return result


@dataclass
class _ForgetJob:
    """Everything forget checked and loaded before editing: the models, the data, the classes."""

    proto: onnx.ModelProto
    src: str | None
    out_path: Path | None
    scan: GraphScan
    names: list[str] | None
    calib: Dataset | None
    evald: Dataset
    has_eval: bool
    num_classes: int
    merged: Statistics | None
    forget: list[int]
    retain: list[int]
    gates: Gates | None
    ref_proto: onnx.ModelProto | None
    notes: list[str] = field(default_factory=list)
    sha: str | None = None      # sha256 of the input file (set by _stamp)
    requested: list[int] = field(default_factory=list)  # the classes this request named (forget adds earlier ones)
    warnings: list[str] = field(default_factory=list)  # suspicious input found before editing
    in_memory: bool = True      # small enough to check in memory (set by _stamp)
    sessions: SessionPool = field(default_factory=SessionPool)  # the original's prediction session, made once


def _prepare_forget(model, data, forget, output, eval_data, reference, feature_samples, gates, labels, preprocess,
                    stats, method: MethodOptions, run: RunOptions, allow_missing: bool = False) -> _ForgetJob:
    """Stage 1: load and check the model, the data, the classes, the statistics and the gates."""
    proto, src = _load(model)
    out_path = check_output_path(src or "<memory>", output) if output is not None else None
    if data is None and stats is None:
        raise DampError("no calibration data: give --data, --stats, or both")
    if data is None and eval_data is None:
        raise DampError("--stats without --data needs --eval-data to validate the edit on")
    scan = scan_graph(proto)  # before running the model: a model with nothing to edit is refused for that reason
    if not scan.editable:
        raise DampError(no_editable_message(scan))
    names = _class_names(proto, labels)
    calib = as_dataset(data, preprocess, names) if data is not None else None
    evald = as_dataset(eval_data, preprocess, names) if eval_data is not None else calib
    io = (run.input_name, run.output_name, run.device)
    sessions = SessionPool()
    k = _num_outputs(proto, calib if calib is not None else evald, *io, pool=sessions)  # the data fit the model?
    merged = _merged_stats(stats, proto, src, run.input_name, method.feature_mode, k) if stats is not None else None
    _check_labels(names, labels, k)
    present = set(merged.samples) if merged is not None else set(calib.classes.tolist())
    missing = [c for c in range(k) if c not in present]
    if missing and not allow_missing:
        where = "the statistics" if merged is not None else "the calibration data"
        raise DampError(f"{where} hold no samples of class(es) {_named(missing[:10], names)}"
                        f"{' and more' if len(missing) > 10 else ''} ({len(missing)} of the model's {k}): a class "
                        f"without a prototype cannot be protected; add its images, or accept it with "
                        f"--allow-missing-classes (allow_missing_classes=True)")
    f, retain = _check_present_classes(_class_indices(names, forget, calib), present, k,
                                       "the statistics" if merged is not None else "the calibration data")
    earlier = [c for c in forgotten_before(proto) if 0 <= c < k]
    notes_seq = []
    if earlier:
        again = [c for c in earlier if c not in f and c in present]
        f, retain = sorted(set(f) | set(again)), [c for c in retain if c not in earlier]
        notes_seq.append(f"the model was edited by onnx-damp before (forgot {_named(earlier, names)}): those classes "
                         f"stay out of the retain span{', are forgotten again with this request' if again else ''}"
                         f" and count in the forget accuracy")
        if not retain:
            raise DampError("forgetting these classes and the earlier ones leaves nothing to retain")
    if merged is not None:
        _check_merged_against(merged, calib, f, k)
    if eval_data is not None:
        _num_outputs(proto, evald, *io, pool=sessions)
        _check_classes(f, evald, k, "the evaluation data")
    gates = _as_gates(gates)
    _check_gates_inputs(gates, True, reference is not None, eval_data is not None and calib is not None,
                        feature_samples,
                        "--eval-data (held-out non-members; the calibration data are the members)" if calib is not None
                        else "--data (the calibration images are the attack's members; statistics hold none)")
    ref_proto = _load(reference)[0] if reference is not None else None
    if ref_proto is not None:
        _num_outputs(ref_proto, evald, *io)
    notes = list(notes_seq)
    why = free_batch_verdict(proto, (calib if calib is not None else evald).x, run.input_name, run.device)
    if isinstance(why, str):
        notes.append(f"the model's batch is fixed at 1 and {why}: it runs one image at a time (slower)")
    if merged is not None:
        _check_stats_layers(merged, scan.editable)
        if calib is None:
            notes.append("statistics given without --data: one DAMP pass of the default plan; no held-out "
                         "selection and no readout stage (both judge on calibration images, which statistics do "
                         "not hold)")
    job = _ForgetJob(proto, src, out_path, scan, names, calib, evald, eval_data is not None, k, merged, f, retain,
                     gates, ref_proto, notes, sessions=sessions)
    job.requested = sorted({int(c) for c in _class_indices(names, forget, calib)})
    tokens = token_probe_note(proto, scan.editable, run.input_name, method.feature_mode)
    job.warnings += [tokens] if tokens else []
    return job


def _check_merged_against(merged: Statistics, calib: Dataset | None, f: list[int], k: int) -> None:
    """Statistics and --data must hold the same classes, and second moments of every forget class."""
    if calib is not None:
        _check_classes(f, calib, k, "the calibration data")
        data_classes = set(calib.classes.tolist())
        if data_classes != set(merged.samples):
            raise DampError(f"the statistics hold classes {sorted(merged.samples)} but --data holds "
                            f"{sorted(data_classes)}; later passes need the same classes")
    if merged.gram_classes is not None and not set(f) <= set(merged.gram_classes):
        raise DampError(f"the statistics keep second moments only for classes {merged.gram_classes}, not for "
                        f"{sorted(set(f) - set(merged.gram_classes))}; collect them again with --forget "
                        f"for these classes (or without --forget)")


def _collector(run: RunOptions):
    """stats.collector.collect, or the Ray backend when asked for."""
    if not (run.ray or run.ray_address):
        return collect_stats
    from onnx_damp.stats.ray import import_ray, ray_collect
    import_ray()
    return functools.partial(ray_collect, address=run.ray_address)


def _edit(job: _ForgetJob, method: MethodOptions, run: RunOptions):
    """Stage 2: the method (method.pipeline.damp_edit), one progress bar per phase. The whole calibration
    set's outputs are predicted only with eval data (the membership attack's members)."""
    return damp_edit(job.proto, job.scan.editable, job.calib, job.forget, job.retain, method, run,
                     first_stats=job.merged, phases=Phases(run.quiet), collector=_collector(run),
                     outputs=job.has_eval, sessions=job.sessions, index=job.scan.index)


def _stamp(job: _ForgetJob, outcome, method: MethodOptions) -> list[str]:
    """Stage 3: record the request in the edited model's metadata and check the model; returns notes."""
    edited, ro = outcome.model, outcome.readout
    job.sha = sha256_file(job.src) if job.src else None
    _record_metadata(edited, {
        "onnx_damp.version": __version__,
        "onnx_damp.forget_classes": json.dumps(job.forget),
        "onnx_damp.calibration_samples": str(_calib_samples(job, outcome)),
        "onnx_damp.statistics_samples": str(outcome.first_stats.num_samples),
        "onnx_damp.heldout_samples": str(len(outcome.heldout) if outcome.heldout is not None else 0),
        "onnx_damp.readout": json.dumps({"node": ro.node, "bias": ro.bias, "classes": ro.classes, "shift": ro.shift}
                                        if ro is not None and ro.applied else None),
        "onnx_damp.feature_mode": method.feature_mode,
        "onnx_damp.passes": str(len(outcome.passes)),
        "onnx_damp.alpha": json.dumps({op.node_name: [round(ps.plans[i].alpha, 6) for ps in outcome.passes]
                                       for i, op in enumerate(job.scan.editable)}),
        "onnx_damp.source_sha256": job.sha or "",
        HISTORY_KEY: json.dumps(forget_history(job.proto) + [{
            "classes": job.requested, "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "version": __version__, "source_sha256": job.sha or ""}]),
    })
    job.in_memory = fits_in_proto(edited)  # too big to check in memory: the written file is checked
    note = _run_checker(edited, job.proto) if job.in_memory else None
    return [note] if note else []


def _calib_samples(job: _ForgetJob, outcome) -> int:
    return len(job.calib) if job.calib is not None else outcome.first_stats.num_samples


def _validate_edit(job: _ForgetJob, outcome, method: MethodOptions, run: RunOptions, feature_samples: int,
                   notes: list[str]) -> ForgetResult:
    """Stage 4: accuracies before/after, per stage, and the verification metrics; the typed result.

    Without eval data the validation data are the held-out calibration images (their outputs come from the
    held-out check); statistics without data have none, and are refused earlier."""
    calib, evald, f, k = job.calib, job.evald, job.forget, job.num_classes
    device, input_name, output_name = run.device, run.input_name, run.output_name
    edited = outcome.model
    protos = {"model": edited, "original": job.proto,
              **({"reference": job.ref_proto} if job.ref_proto is not None else {})}
    member = calib if job.has_eval else None  # membership attack: calibration data are members
    known = {"model": outcome.calib_outputs, "original": outcome.original_outputs}  # on calib, from the passes
    known = {n: o for n, o in known.items() if o is not None}
    eval_known: dict = {}
    validated_on = "evaluation data"
    if not job.has_eval:
        evald, eval_known = subset(calib, outcome.heldout), outcome.heldout_outputs
        validated_on = ("held-out calibration images (no --eval-data given)" if len(outcome.heldout) < len(calib)
                        else "calibration data (no --eval-data given; too few images to hold any out)")
    _, eval_retain = _check_classes(f, evald, k, "the evaluation data")
    reuse = {n for n in protos if n in eval_known}  # the held-out check already predicted them
    staged = job.has_eval and outcome.readout is not None and outcome.readout.applied
    work = (len(evald) * (len(protos) - len(reuse)) + (int(np.isin(evald.y, f).sum()) if staged else 0))
    phases = Phases(run.quiet)
    with phases("validation", work) as bar:
        probs = {n: to_probabilities(eval_known[n] if n in reuse else predict(
                     p, evald, run.batch_size, device, input_name, output_name, bar,
                     session=pooled(job.sessions, p, evald, input_name, device) if n == "original" else None))
                 for n, p in protos.items()}
        before = summarize(probs["original"].argmax(1), evald.y, f)
        after = summarize(probs["model"].argmax(1), evald.y, f)
        stages = _stage_accuracies(outcome, evald, f, after, device, input_name, output_name, bar,
                                   known=not job.has_eval, batch_size=run.batch_size)
    work = (len(member) * sum(n not in known for n in protos) if member is not None else 0) \
        + feature_runs(evald, f, eval_retain, feature_samples, True, job.ref_proto is not None)
    with phases("verification", work) as bar:
        ver = verify(protos, evald, f, eval_retain, {"model": after, "original": before}, probs,
                     train=member, train_outputs=known if member is not None else None,
                     train_reason=("needs --data (the attack's members: statistics alone hold no images)"
                                   if calib is None else "needs --eval-data: the calibration data are the "
                                   "attack's members, held-out data its non-members"),
                     feature_samples=feature_samples, batch_size=run.batch_size, device=device, input_name=input_name,
                     output_name=output_name, progress=bar)
    result = ForgetResult(edited, f, job.retain, outcome.passes,
                          total_relative_change(job.proto, edited, job.scan.editable, job.scan.index), before, after,
                          validated_on,
                          _calib_samples(job, outcome), method.feature_mode, job.sha, not_editable=job.scan.skipped,
                          verification=ver, reference_js=_reference_js(probs, evald.y, f),
                          token_layouts={n: lay.describe() for n, lay in outcome.first_stats.token_layouts.items()},
                          class_names=job.names,
                          forget_confusion=forget_confusion({n: p.argmax(1) for n, p in probs.items()}, evald.y, f, k),
                          notes=notes, statistics=_stats_summary(job.merged) if job.merged is not None else None,
                          readout=outcome.readout, stages=stages, heldout=_heldout_summary(outcome),
                          warnings=heldout_warnings(outcome, method.target_forget_accuracy),
                          target_forget_accuracy=method.target_forget_accuracy, source=job.src,
                          reference_summary=(summarize(probs["reference"].argmax(1), evald.y, f)
                                             if "reference" in probs else None))
    result.gates = result.check_gates(job.gates)
    if job.gates is not None and job.gates.max_forget_acc is not None:
        result.target_forget_accuracy = job.gates.max_forget_acc
    return result


def _save(job: _ForgetJob, result: ForgetResult) -> None:
    """Stage 5: write the edited model atomically (with external data when the input had it) and check it."""
    external = bool(job.src) and has_external_data(job.src)
    result.written = [str(p) for p in save_model_atomic(result.model, job.out_path, external_data=external)]
    if not job.in_memory:
        note = _run_checker(str(job.out_path), job.src)
        result.notes += [note] if note else []


def _stage_accuracies(outcome, evald: Dataset, f: list[int], after: AccuracySummary, device, input_name,
                      output_name, bar=None, known: bool = False, batch_size: int = 256) -> dict:
    """Forget accuracy on the validation data after the representation edit alone and after the readout.

    known: the validation data are the held-out images, where the readout record has the first already.
    batch_size: images per run."""
    final = {"forget_accuracy": after.forget_accuracy}
    if outcome.readout is None or not outcome.readout.applied:
        return {"representation": final, "readout": None}
    if known:
        return {"representation": {"forget_accuracy": outcome.readout.before.forget_accuracy}, "readout": final}
    idx = np.flatnonzero(np.isin(evald.y, f))
    pred = predict(outcome.representation, evald, batch_size, device, input_name, output_name, bar,
                   indices=idx).argmax(1)
    return {"representation": {"forget_accuracy": float(np.mean(pred == evald.y[idx])) if len(idx) else None},
            "readout": final}


def _heldout_summary(outcome) -> dict | None:
    if outcome.heldout is None:
        return None
    return {"samples": int(len(outcome.heldout)),
            "score": outcome.heldout_score.to_dict() if outcome.heldout_score is not None else None}


def heldout_warnings(outcome, target: float, max_mean_drop: float = MAX_MEAN_DROP,
                     max_class_drop: float = MAX_CLASS_DROP) -> list[str]:
    """One line per bound that the held-out calibration images say the returned edit misses, and by how much."""
    sc = outcome.heldout_score
    if sc is None:
        return []
    out = []
    if sc.forget_accuracy > target:
        out.append(f"held-out calibration images: forget accuracy {100 * sc.forget_accuracy:.1f}% is above the "
                   f"{100 * target:.1f}% target by {100 * (sc.forget_accuracy - target):.1f} points")
    if sc.mean_drop > max_mean_drop:
        out.append(f"held-out calibration images: mean retain accuracy fell {100 * sc.mean_drop:.1f} points "
                   f"(bound {100 * max_mean_drop:.0f})")
    c, d = sc.worst
    if d > max_class_drop:
        out.append(f"held-out calibration images: retain class {c} fell {100 * d:.1f} points "
                   f"(bound {100 * max_class_drop:.0f})")
    return out


# ----------------------------------------------------------------------------------------------- collect
def _data_input_name(proto: onnx.ModelProto, input_name: str | None) -> str:
    """The input the data feed: --input-name, else the model's only non-initializer input."""
    if input_name is not None:
        return input_name
    inp = data_input(proto)
    return inp.name if inp is not None else ""


def _provenance(proto: onnx.ModelProto, src: str | None, input_name: str | None, preprocessing: str,
                num_outputs: int, device: str, batch_size: int, sources: list[str]) -> Provenance:
    return Provenance(sha256_file(src) if src else "", proto_sha256(proto), _data_input_name(proto, input_name),
                      preprocessing, num_outputs, device, batch_size, sources, __version__)


def _gram_bytes(ops: list[EditableOp], n_classes: int) -> int:
    """Memory (bytes) of one float64 Gram per class for every distinct tapped activation (an upper bound)."""
    dims = {(op.input_name, op.feature_dim): op.feature_dim for op in ops}
    return 8 * n_classes * sum(d * d for d in dims.values())


GRAM_LIMIT = 4 << 30  # refuse to keep every class's Gram above this many bytes (ask for --forget instead)


@host_blas_limited
def collect(model: ModelLike, data, output: str | os.PathLike | None = None, *, forget: Sequence | None = None,
            labels: str | os.PathLike | None = None, batch_size: int = 128, device: str = "cpu",
            feature_mode: str = "auto", input_name: str | None = None, preprocessing: str = "npz",
            quiet: bool = True, ray: bool = False, ray_address: str | None = None, preprocess=None) -> Statistics:
    """Statistics of model's editable layers on data (one shard), optionally saved to output (.npz).

    Shards collected this way (any number, anywhere) merge with shards.merge (bit for bit when no class
    straddles shards) and feed
    forget(stats=[...]). forget: keep second moments only for these classes (the ones you will
    forget; smaller files); by default every class keeps them, so the statistics serve any forget set.
    preprocessing: a fingerprint of how the data were made; shards must agree to be merged. preprocess:
    image preprocessing (as in forget); when given and preprocessing is left at "npz", its settings are the
    fingerprint.
    """
    run = RunOptions(batch_size, device, input_name, None, quiet, ray, ray_address).check()
    MethodOptions(feature_mode=feature_mode).check()
    proto, src = _load(model)
    names = _class_names(proto, labels)
    ds = as_dataset(data, preprocess, names)
    if getattr(ds.x, "lazy", False) and preprocessing == "npz":  # images: their preprocessing is the fingerprint
        preprocessing = json.dumps(as_preprocess(preprocess).to_dict(), sort_keys=True)
    k = _num_outputs(proto, ds, input_name, None, device)  # also checks the data fit the input
    too_big = [c for c in ds.classes.tolist() if c >= k]
    if too_big:
        raise DampError(f"{ds.source} has labels {too_big[:5]} but the model has only {k} outputs")
    gram_classes = None
    if forget:
        gram_classes = _class_indices(names, forget)
        bad = [c for c in gram_classes if c < 0 or c >= k]
        if bad:
            raise DampError(f"class(es) {bad} out of range: the model has {k} outputs (0..{k - 1})")
    scan = scan_graph(proto)
    if not scan.editable:
        raise DampError(no_editable_message(scan))
    need = _gram_bytes(scan.editable, len(ds.classes)) if gram_classes is None else 0
    if need > GRAM_LIMIT:
        raise DampError(f"keeping second moments of every class needs {need / (1 << 30):.1f} GiB here; pass "
                        f"--forget with the classes you will forget to keep them for those only")
    out_path = Path(output) if output is not None else None
    if out_path is not None:
        folder = out_path.parent if str(out_path.parent) else Path(".")
        if not folder.is_dir():
            raise DampError(f"cannot write statistics: folder {folder} does not exist")
    collector = _collector(run)
    with Progress(len(ds), "statistics", quiet) as bar:
        st = collector(proto, scan.editable, ds, gram_classes, batch_size, device, feature_mode, input_name, bar)
    st.provenance = _provenance(proto, src, input_name, preprocessing, k, device, batch_size, [ds.source])
    if out_path is not None:
        st.path = st.save(out_path)
    return st


def _merged_stats(stats, proto: onnx.ModelProto, src: str | None, input_name: str | None, feature_mode: str,
                  num_outputs: int) -> Statistics:
    """Load and merge --stats, and check they belong to this model, input and feature mode."""
    items = [stats] if isinstance(stats, (str, os.PathLike, Statistics)) else list(stats)
    if not items:
        raise DampError("no statistics file given")
    items = [p for item in items for p in _expand_stats(item)]
    shards = [s if isinstance(s, Statistics) else Statistics.load(s) for s in items]
    for k_, s in enumerate(shards):
        if s.provenance is None:
            raise DampError(f"statistics {s.path or k_} carry no model hash; make them with onnx-damp collect")
    merged = shards[0] if len(shards) == 1 else merge(shards)
    prov = merged.provenance
    mine = Provenance(sha256_file(src) if src else "", proto_sha256(proto), _data_input_name(proto, input_name))
    if not prov.same_model(mine):
        raise DampError(f"the statistics were collected from another model (sha256 "
                        f"{(prov.model_sha256 or prov.graph_sha256)[:12]}, this one "
                        f"{(mine.model_sha256 or mine.graph_sha256)[:12]})")
    if prov.input_name != mine.input_name:
        raise DampError(f"the statistics fed input {prov.input_name!r}, this run feeds {mine.input_name!r}")
    if merged.feature_mode != feature_mode:
        raise DampError(f"the statistics were collected with --features {merged.feature_mode}; "
                        f"pass the same --features")
    if prov.num_outputs is not None and prov.num_outputs != num_outputs:
        raise DampError(f"the statistics saw {prov.num_outputs} model outputs, this model has {num_outputs}")
    return merged


def _stats_summary(st: Statistics) -> dict:
    p = st.provenance
    return {"sources": p.sources, "samples": st.num_samples,
            "model_sha256": p.model_sha256, "graph_sha256": p.graph_sha256, "preprocessing": p.preprocessing,
            "feature_mode": st.feature_mode, "gram_classes": st.gram_classes}


def _expand_stats(item):
    """A statistics file, or a glob pattern (quoted on the command line: no argument-length limit)."""
    if isinstance(item, Statistics) or Path(item).exists() or not any(ch in str(item) for ch in "*?["):
        return [item]
    found = sorted(glob.glob(str(item)))
    if not found:
        raise DampError(f"no statistics file matches {item}")
    return found


def _check_stats_layers(st: Statistics, ops: list[EditableOp]) -> None:
    for op in ops:
        ls = st.layers.get(op.node_name)
        if ls is None or ls.feature_dim != op.feature_dim:
            raise DampError(f"the statistics lack layer {op.node_name!r} (made by another onnx-damp version?)")


# ---------------------------------------------------------------------------------------------- evaluate
def _reference_js(probs: dict[str, np.ndarray], y: np.ndarray, f: list[int]) -> dict | None:
    """Mean JS divergence to the reference on forget and on retain samples, for the model and the original."""
    if "reference" not in probs:
        return None
    fmask = np.isin(y, f)
    r = probs["reference"]
    return {name: {"forget": float(np.mean(js_divergence(probs[name][fmask], r[fmask]))),
                   "retain": float(np.mean(js_divergence(probs[name][~fmask], r[~fmask])))}
            for name in ("model", "original") if name in probs}


@dataclass
class EvaluateResult:
    summary: AccuracySummary
    original: AccuracySummary | None = None
    retain_agreement: float | None = None
    retain_kl: float | None = None
    reference_js: dict | None = None
    verification: Verification = field(default_factory=Verification)
    gates: list[GateResult] = field(default_factory=list)
    class_names: list[str] | None = None     # from --labels or the model's metadata
    forget_confusion: dict | None = None     # metrics.forget_confusion of the model (and original, reference)
    target_forget_accuracy: float = MethodOptions.target_forget_accuracy  # the verdict's target
    warnings: list[str] = field(default_factory=list)  # e.g. an --original that is not the edit's source
    reference: AccuracySummary | None = None  # the retrained reference on the same data
    model_path: str | None = None             # the evaluated model's path (None: given in memory)
    source_sha256: str | None = None          # the source the model records (onnx-damp edits), if any

    @property
    def verdict(self) -> Verdict:
        """FORGOTTEN or not on the evaluated data (verify/verdict.py)."""
        return verdict(self.summary, self.original, self.target_forget_accuracy, "evaluated data")

    @property
    def passed(self) -> bool:
        """Whether every gate asked for holds (True when none was asked for)."""
        return all(g.passed for g in self.gates)

    def check_gates(self, gates: "Gates | dict | None") -> list[GateResult]:
        """Evaluate gates against this result's metrics (does not change self.gates)."""
        return check_gates(gate_values(self.summary, self.original, self.verification), _as_gates(gates))

    def to_dict(self) -> dict:
        d = {"verdict": self.verdict.to_dict(), "model_path": self.model_path, "source_sha256": self.source_sha256,
             "model": self.summary.to_dict(), "warnings": self.warnings}
        if self.reference is not None:
            d["reference"] = self.reference.to_dict()
        if self.original is not None:
            c, drop = worst_retain_drop(self.original, self.summary)
            d["original"] = self.original.to_dict()
            d["retain_agreement"] = self.retain_agreement
            d["retain_kl_original_to_model"] = self.retain_kl
            d["retain_accuracy_drop"] = self.original.retain_accuracy - self.summary.retain_accuracy
            d["worst_retain_drop"] = {"class": c, "drop": drop}
        if self.reference_js is not None:
            d["reference_js"] = self.reference_js
        d["verification"] = self.verification.to_dict()
        d["gates"] = gates_dict(self.gates)
        d["class_names"] = self.class_names
        d["forget_confusion"] = self.forget_confusion
        return d


def recorded_source(proto: onnx.ModelProto) -> str:
    """The sha256 of the model an onnx-damp edit was made from, as the edit records it ('' when none)."""
    return next((p.value for p in proto.metadata_props if p.key == "onnx_damp.source_sha256"), "")


def _original_warnings(proto: onnx.ModelProto, original) -> list[str]:
    """A warning when --original is a file whose sha256 is not the source the edited model records."""
    recorded = recorded_source(proto)
    if not recorded or original is None or isinstance(original, onnx.ModelProto):
        return []
    try:
        sha = sha256_file(original)
    except OSError:
        return []
    if sha == recorded:
        return []
    return [f"--original {os.fspath(original)} (sha256 {sha[:12]}) is not the model this one was edited from "
            f"(sha256 {recorded[:12]}): the comparisons against it measure something else"]


@host_blas_limited
def evaluate(model: ModelLike, data, forget: Sequence[int] | None = None, original: ModelLike | None = None,
             reference: ModelLike | None = None, batch_size: int = 256, device: str = "cpu",
             input_name: str | None = None, output_name: str | None = None, quiet: bool = True,
             train_data=None, feature_samples: int | None = None, gates: "Gates | dict | None" = None,
             labels: str | os.PathLike | None = None, preprocess=None, default_gates: bool = True) -> EvaluateResult:
    """Accuracy per class, forget/retain accuracy; agreement and KL against the original; JS to a reference;
    the verification metrics of docs/metrics.md (membership inference needs train_data, the training images
    the model saw, e.g. the calibration data); gates checked on them (EvaluateResult.passed, .gates).
    default_gates: the tool's own targets fill the thresholds gates leave unset (forget accuracy at most 1%;
    with an original, mean retain drop at most 1 point and no retain class down more than 3)."""
    proto, src = _load(model)
    names = _class_names(proto, labels)
    feature_samples = FEATURE_SAMPLES if feature_samples is None else feature_samples
    if not forget:  # the edited model records what it forgot
        forget = forgotten_before(proto)
        if not forget:
            raise DampError("no --forget given and the model records no forgotten classes (it was not edited by "
                            "onnx-damp, or its metadata were removed): give --forget")
    ds = as_dataset(data, preprocess, names)
    k = _num_outputs(proto, ds, input_name, output_name, device)
    _check_labels(names, labels, k)
    f, retain = _check_classes(_class_indices(names, forget, ds), ds, k, "the data")
    train = None
    if train_data is not None:
        train = as_dataset(train_data, preprocess, names)
        _num_outputs(proto, train, input_name, output_name, device)
        _check_classes(f, train, k, "the training data")
    gates = _as_gates(gates)
    if default_gates:
        gates = tool_gates(gates, MethodOptions.target_forget_accuracy, original is not None)
    _check_gates_inputs(gates, original is not None, reference is not None, train is not None, feature_samples,
                        "--train-data (training images: the attack's members)")
    warnings = _original_warnings(proto, original)
    others = {"original": original, "reference": reference}
    protos = {"model": proto, **{k_: _load(v)[0] for k_, v in others.items() if v is not None}}
    n_models = len(protos)
    phases = Phases(quiet)
    with phases("validation", n_models * len(ds)) as bar:
        outs = {name: to_probabilities(predict(p, ds, batch_size, device, input_name, output_name, bar))
                for name, p in protos.items()}
    work = ((n_models * len(train) if train is not None else 0)
            + feature_runs(ds, f, retain, feature_samples, "original" in protos, "reference" in protos))
    with phases("verification", work) as bar:
        res = EvaluateResult(summarize(outs["model"].argmax(1), ds.y, f), class_names=names,
                             forget_confusion=forget_confusion({n: o.argmax(1) for n, o in outs.items()}, ds.y, f, k),
                             warnings=warnings, model_path=src, source_sha256=recorded_source(proto) or None,
                             reference=(summarize(outs["reference"].argmax(1), ds.y, f) if "reference" in outs
                                        else None))
        fmask = np.isin(ds.y, f)
        summaries = {"model": res.summary}
        if "original" in outs:
            o = outs["original"]
            res.original = summaries["original"] = summarize(o.argmax(1), ds.y, f)
            res.retain_agreement = float(np.mean(o[~fmask].argmax(1) == outs["model"][~fmask].argmax(1)))
            res.retain_kl = float(np.mean(kl_divergence(o[~fmask], outs["model"][~fmask])))
        res.reference_js = _reference_js(outs, ds.y, f)
        res.verification = verify(protos, ds, f, retain, summaries, outs, train=train,
                                  train_reason="needs --train-data (training images of the model)",
                                  feature_samples=feature_samples, batch_size=batch_size, device=device,
                                  input_name=input_name, output_name=output_name, progress=bar)
    res.gates = res.check_gates(gates)
    if gates is not None and gates.max_forget_acc is not None:
        res.target_forget_accuracy = gates.max_forget_acc
    return res
