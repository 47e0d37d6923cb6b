"""DAMP passes: collect statistics, edit every layer, check the forget class on calibration data, repeat.

One pass is the plain one-shot DAMP edit. Because every layer's subspace and alpha come from the
statistics of the *original* network, deep layers see forget-class features that earlier edits have
already moved; a further pass re-collects statistics on the edited model and edits again. Passes stop
as soon as the forget-class accuracy on the calibration data is at or below the target (or after
max_passes), so most forget sets need one pass.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import onnx

from . import damp as dm
from .data import Dataset
from .graph import EditableOp
from .metrics import summarize
from .predict import predict
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


def damp_edit(proto: onnx.ModelProto, ops: list[EditableOp], calib: Dataset | None, forget: Sequence[int],
              retain: Sequence[int], *, batch_size: int = 128, device: str = "cpu", feature_mode: str = "auto",
              extra_directions: bool = True, input_name: str | None = None, output_name: str | None = None,
              max_passes: int = 3, target_forget_accuracy: float = 0.01, first_stats: Statistics | None = None,
              progress: Callable[[int], None] | None = None, collector: Callable[..., Statistics] = collect
              ) -> EditOutcome:
    """Edit a copy of proto with DAMP until calibration forget accuracy <= target or max_passes are done.

    first_stats: statistics of proto (e.g. merged shards) for pass 1; calib may then be None, which
    means exactly one pass (nothing to re-collect on, nothing to check). collector: stats.collect or
    a function with its signature (the Ray backend).
    """
    current = proto
    outcome = EditOutcome(proto)
    for k in range(max_passes):
        if k == 0 and first_stats is not None:
            stats = first_stats
        else:
            layouts = outcome.first_stats.token_layouts if outcome.first_stats is not None else None
            stats = collector(current, ops, calib, forget, batch_size, device, feature_mode, input_name, progress,
                              layouts)
        if k == 0:
            outcome.first_stats = stats
        plans = dm.plan(ops, stats, forget, retain, extra_directions)
        edited = onnx.ModelProto()
        edited.CopyFrom(current)
        dm.apply(edited, plans)
        current = edited
        if calib is None:
            outcome.passes.append(PassRecord(plans, None, None))
            break
        outcome.calib_outputs = predict(edited, calib, 256, device, input_name, output_name)
        s = summarize(outcome.calib_outputs.argmax(1), calib.y, forget)
        outcome.passes.append(PassRecord(plans, s.forget_accuracy, s.retain_accuracy))
        if s.forget_accuracy <= target_forget_accuracy:
            break
    outcome.model = current
    return outcome
