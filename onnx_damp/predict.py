"""Batched predictions of an ONNX classifier on a data set."""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx

from .data import Dataset, check_against_input, plain_batches, prefetch
from .errors import DampError
from .runtime import input_spec, make_session, output_name, run_checked


def predict(model: onnx.ModelProto, data: Dataset, batch_size: int = 256, device: str = "cpu",
            input_name: str | None = None, output: str | None = None,
            progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Return the model's output rows (logits or probabilities) for every sample, [N, classes]."""
    sess = make_session(model, device)
    spec = input_spec(sess, input_name)
    x = check_against_input(data, spec.shape, spec.dtype, spec.name)
    out_name = output_name(sess, output)
    rows = []
    for (idx, real), xb in prefetch(plain_batches(len(x), batch_size, spec.fixed_batch), lambda b: x[b[0]]):
        (out,) = run_checked(sess, [out_name], {spec.name: xb})
        out = np.asarray(out)
        if out.ndim != 2 or out.shape[0] != len(idx):
            raise DampError(f"output {out_name!r} has shape {list(out.shape)} for a batch of {len(idx)}; "
                            "expected [batch, classes] (pick the logits with --output-name)")
        rows.append(out[:real].astype(np.float64))
        if progress:
            progress(real)
    return np.concatenate(rows)
