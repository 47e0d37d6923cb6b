"""Batched predictions of an ONNX classifier on a data set."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import onnx

from onnx_damp.data.dataset import Dataset, check_against_input, plain_batches, prefetch
from onnx_damp.errors import DampError
from onnx_damp.runtime.batching import batch_free_model
from onnx_damp.runtime.session import input_spec, make_session, output_name, run_checked, serialise_whole


def predict(model: onnx.ModelProto, data: Dataset, batch_size: int = 256, device: str = "cpu",
            input_name: str | None = None, output: str | None = None,
            progress: Callable[[int], None] | None = None, indices: np.ndarray | None = None,
            session=None) -> np.ndarray:
    """Return the model's output rows (logits or probabilities) for every sample, [N, classes].

    indices: predict only these samples (rows in that order), without copying the data.
    session: an onnxruntime session of model (from runtime.make_session) to reuse across calls; it is
    trusted to be model's (model is not read then).
    """
    sess = prediction_session(model, data, input_name, device) if session is None else session
    spec = input_spec(sess, input_name)
    x = check_against_input(data, spec.shape, spec.dtype, spec.name)
    out_name = output_name(sess, output)
    pick = np.arange(len(x)) if indices is None else np.asarray(indices, dtype=np.int64)
    if len(pick) and (pick.min() < 0 or pick.max() >= len(x)):
        raise ValueError(f"indices must lie in [0, {len(x)})")
    rows = []
    if len(pick) == 0:  # nothing to run: the width comes from the output's declared shape when it has one
        dims = next(o.shape for o in sess.get_outputs() if o.name == out_name)
        return np.zeros((0, dims[-1] if dims and isinstance(dims[-1], int) else 0))
    for (idx, real), xb in prefetch(plain_batches(len(pick), batch_size, spec.fixed_batch),
                                    lambda b: x[pick[b[0]]]):
        (out,) = run_checked(sess, [out_name], {spec.name: xb})
        rows.append(output_rows(out, out_name, len(idx))[:real])
        if progress:
            progress(real)
    return np.concatenate(rows)


def prediction_session(model: onnx.ModelProto, data: Dataset, input_name: str | None = None, device: str = "cpu"):
    """The onnxruntime session predict runs: on a symbolic-batch copy when the batch is fixed at 1 and the
    copy's outputs equal the original's (runtime.batching), else on model itself."""
    free, _ = batch_free_model(model, data.x, input_name, device)
    return make_session(free if free is not None else model, device)


class SessionPool:
    """Prediction sessions of the models one job runs several times (the original: its class count, held-out
    check, validation), made once per model object and kept while the pool lives.

    Only models whose weights take the in-memory path (session.serialise_whole: at most SERIALISE_LIMIT bytes)
    are kept: a larger model's session would otherwise stay in memory through the statistics pass."""

    def __init__(self) -> None:
        self._kept: dict[tuple, tuple] = {}

    def session(self, model: onnx.ModelProto, data: Dataset, input_name: str | None = None, device: str = "cpu"):
        """A session of model (prediction_session's), the kept one when model was seen before."""
        key = (id(model), input_name, device)
        hit = self._kept.get(key)
        if hit is not None and hit[0] is model:
            return hit[1]
        sess = prediction_session(model, data, input_name, device)
        if serialise_whole(model):
            self._kept[key] = (model, sess)  # the model is held too, so its id is not reused while kept
        return sess


def pooled(pool: "SessionPool | None", model: onnx.ModelProto, data: Dataset, input_name: str | None,
           device: str):
    """pool's session of model, or None (predict then makes its own) when there is no pool."""
    return pool.session(model, data, input_name, device) if pool is not None else None


def output_rows(out, out_name: str, batch: int) -> np.ndarray:
    """One batch's output as float64 [batch, classes], or a one-line error naming the output."""
    out = np.asarray(out)
    if out.ndim != 2 or out.shape[0] != batch:
        raise DampError(f"output {out_name!r} has shape {list(out.shape)} for a batch of {batch}; "
                        "expected [batch, classes] (pick the logits with --output-name)")
    return out.astype(np.float64)


class FedWeights:
    """One onnxruntime session, run with a set of weights fed as inputs (overridable initializers): what
    predict needs of a session (run, get_inputs, get_outputs), so that every candidate edit of one model is
    scored on a single session (weight_fed_session's) instead of one session each."""

    def __init__(self, session, weights: dict[str, np.ndarray]) -> None:
        self._session, self._weights = session, weights

    def run(self, fetch, feed: dict):
        return self._session.run(fetch, {**feed, **self._weights})

    def get_inputs(self):
        return self._session.get_inputs()

    def get_outputs(self):
        return self._session.get_outputs()


def weight_fed_session(model: onnx.ModelProto, names: Sequence[str], data: Dataset, input_name: str | None = None,
                       device: str = "cpu"):
    """A session of model (its symbolic-batch copy where prediction_session would take it) in which the
    initializers called names are graph inputs as well, so that each run may feed other values for them
    (FedWeights). onnxruntime then neither folds nor pre-packs them: meant for MatMul/Gemm weights, whose
    kernels run as fast either way (a Conv loses its blocked layout)."""
    free, _ = batch_free_model(model, data.x, input_name, device)
    exposed = onnx.ModelProto()
    exposed.CopyFrom(free if free is not None else model)
    exposed.ir_version = max(exposed.ir_version, 4)  # below 4 every initializer is an input already
    inits = {t.name: t for t in exposed.graph.initializer}
    listed = {i.name for i in exposed.graph.input}
    for name in names:
        if name not in listed:
            t = inits[name]
            exposed.graph.input.append(onnx.helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
    return make_session(exposed, device)
