"""DAMP passes: collect statistics, edit every layer, check the forget class on calibration data, repeat.

One pass is the plain one-shot DAMP edit. Because every layer's subspace and alpha come from the
statistics of the *original* network, deep layers see forget-class features that earlier edits have
already moved; a further pass re-collects statistics on the edited model and edits again. Passes stop
as soon as the forget-class accuracy on the calibration data is at or below the target (or after
max_passes), so most forget sets need one pass.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import onnx

from . import damp as dm
from .data import Dataset
from .graph import EditableOp
from .metrics import pooled_accuracy, summarize
from .predict import predict
from .runtime import make_session
from .stats import Statistics, collect


@dataclass
class PassRecord:
    plans: list[dm.LayerPlan]
    calib_forget_accuracy: float | None   # on the calibration data, after this pass (None: no data given)
    calib_retain_accuracy: float | None

    def to_dict(self) -> dict:
        return {"calibration_forget_accuracy": self.calib_forget_accuracy,
                "calibration_retain_accuracy": self.calib_retain_accuracy,
                "layers": [p.to_dict() for p in self.plans]}


@dataclass
class EditOutcome:
    model: onnx.ModelProto
    passes: list[PassRecord] = field(default_factory=list)
    first_stats: Statistics | None = None
    calib_outputs: "np.ndarray | None" = None  # the final model's output rows on calib (reused for validation)
    original_outputs: "np.ndarray | None" = None  # the unedited model's output rows on calib (its statistics pass)


def damp_edit(proto: onnx.ModelProto, ops: list[EditableOp], calib: Dataset | None, forget: Sequence[int],
              retain: Sequence[int], *, batch_size: int = 128, device: str = "cpu", feature_mode: str = "auto",
              extra_directions: bool = True, input_name: str | None = None, output_name: str | None = None,
              max_passes: int = 3, target_forget_accuracy: float = 0.01, first_stats: Statistics | None = None,
              progress: Callable[[int], None] | None = None, collector: Callable[..., Statistics] = collect,
              extra_bar: str = "energy") -> EditOutcome:
    """Edit a copy of proto with DAMP until calibration forget accuracy <= target or max_passes are done.

    first_stats: statistics of proto (e.g. merged shards) for pass 1; calib may then be None, which
    means exactly one pass (nothing to re-collect on, nothing to check). collector: stats.collect or
    a function with its signature (the Ray backend); the keywords outputs/output are passed only to a
    collector that accepts them, and without returned outputs the models are predicted instead.
    extra_bar: see projection.extend_subspace (the "variance" bar is an ablation, not a CLI option).
    """
    current = proto
    outcome = EditOutcome(proto)
    forget_idx = np.flatnonzero(np.isin(calib.y, list(forget))) if calib is not None else None
    f_out, sess = None, None  # the last edited model's forget-class outputs and session (set after each pass)
    for k in range(max_passes):
        if k == 0 and first_stats is not None:
            stats = first_stats
        else:
            layouts = outcome.first_stats.token_layouts if outcome.first_stats is not None else None
            stats = collector(current, ops, calib, forget, batch_size, device, feature_mode, input_name, progress,
                              layouts, **_output_kwargs(collector, output_name))
            if k == 0:
                outcome.original_outputs = stats.outputs  # the unedited model, from its statistics pass
            else:  # the previous pass's model: its retain accuracy (free when the collector kept outputs)
                out = stats.outputs
                if out is None:
                    out = _complete_outputs(current, calib, forget_idx, f_out, device, input_name, output_name, sess)
                outcome.passes[-1].calib_retain_accuracy = summarize(out.argmax(1), calib.y, forget).retain_accuracy
        if k == 0:
            outcome.first_stats = stats
        plans = dm.plan(ops, stats, forget, retain, extra_directions, extra_bar)
        edited = onnx.ModelProto()
        edited.CopyFrom(current)
        dm.apply(edited, plans)
        current = edited
        if calib is None:
            outcome.passes.append(PassRecord(plans, None, None))
            break
        # stopping rule: only the forget-class samples need predicting
        sess = make_session(edited, device)  # one session for the stopping rule and the rest of calib
        f_out = predict(edited, calib, 256, device, input_name, output_name, indices=forget_idx, session=sess)
        f_acc = forget_accuracy(f_out, calib.y[forget_idx])
        record = PassRecord(plans, f_acc, None)
        outcome.passes.append(record)
        if f_acc <= target_forget_accuracy or k == max_passes - 1:
            full = _complete_outputs(edited, calib, forget_idx, f_out, device, input_name, output_name, sess)
            record.calib_retain_accuracy = summarize(full.argmax(1), calib.y, forget).retain_accuracy
            outcome.calib_outputs = full
            break
        if stats.outputs is not None:  # the collector returns outputs, so the next pass gives this model's:
            sess = None                # free its session (a copy of every weight) before that pass
    outcome.model = current
    return outcome


def _output_kwargs(collector: Callable[..., Statistics], output_name: str | None) -> dict:
    """outputs=True, output=... for a collector that takes them (stats.collect, ray_collect), else nothing."""
    try:
        params = inspect.signature(collector).parameters
    except (TypeError, ValueError):
        return {}
    takes = "outputs" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return {"outputs": True, "output": output_name} if takes else {}


def forget_accuracy(forget_outputs: np.ndarray, forget_labels: np.ndarray) -> float:
    """Fraction of forget-class samples still classified as their class (the stopping rule's measure)."""
    return pooled_accuracy(forget_outputs.argmax(1), forget_labels) if len(forget_labels) else float("nan")


def _complete_outputs(model: onnx.ModelProto, calib: Dataset, forget_idx: np.ndarray, forget_out: np.ndarray,
                      device: str, input_name: str | None, output_name: str | None, session=None) -> np.ndarray:
    """Output rows of model on every calibration sample, predicting only those not yet predicted."""
    rest = np.setdiff1d(np.arange(len(calib)), forget_idx)
    r_out = predict(model, calib, 256, device, input_name, output_name, indices=rest, session=session)
    width = forget_out.shape[1] if len(forget_idx) else r_out.shape[1]
    full = np.zeros((len(calib), width))
    if len(forget_idx):
        full[forget_idx] = forget_out
    if len(rest):
        full[rest] = r_out
    return full
