"""Ray backend: collect statistics on class-aligned shards in parallel Ray tasks and merge them.

Each task builds its own onnxruntime session from the model bytes (put once in Ray's object store)
and returns the Statistics of its shard; the driver merges them (shards.merge). Shards hold whole
classes, so the merged statistics equal single-process ones bit for bit (see shards.py). Ray is an
optional extra (`pip install 'onnx-damp[ray]'`), imported only when --ray / --ray-address is used;
on a cluster every worker needs onnx-damp (same version) and onnxruntime installed.
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import onnx

from onnx_damp.data.dataset import Dataset
from onnx_damp.errors import DampError
from onnx_damp.runtime.modelio import proto_size
from onnx_damp.ops.base import EditableOp
from onnx_damp.stats.collector import collect
from onnx_damp.stats.statistics import Statistics
from onnx_damp.runtime.tokens import TokenLayout, probe_token_layouts


def import_ray():
    try:
        import ray
    except ImportError:
        raise DampError("--ray needs Ray, which is not installed: pip install 'onnx-damp[ray]'") from None
    return ray


def init_ray(address: str | None = None):
    """Connect to the Ray cluster at address (None: reuse the running one or start a local one)."""
    ray = import_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False, include_dashboard=False, logging_level="ERROR")
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DampError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {msg}") from None
    return ray


def class_aligned_shards(y: np.ndarray, n_shards: int) -> list[np.ndarray]:
    """Split sample indices into at most n_shards groups of whole classes, balanced by sample count.

    Indices keep their original order inside every shard, so each class is batched exactly as one
    process batches it.
    """
    classes, counts = np.unique(y, return_counts=True)
    n = max(1, min(int(n_shards), len(classes)))
    load = [0] * n
    owner: dict[int, int] = {}
    for c, cnt in sorted(zip(classes.tolist(), counts.tolist()), key=lambda t: (-t[1], t[0])):
        k = min(range(n), key=lambda i: (load[i], i))
        owner[c], load[k] = k, load[k] + cnt
    shard_of = np.array([owner[int(c)] for c in y])
    return [np.flatnonzero(shard_of == k) for k in range(n) if np.any(shard_of == k)]


def _collect_shard(model_bytes: bytes, ops, x, y, gram_classes, batch_size, device, feature_mode, input_name,
                   layouts) -> Statistics:
    """One Ray task: a session of its own on one shard, with as many threads as CPUs Ray gave the task."""
    import ray

    from onnx_damp.runtime import session as runtime

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0)
    runtime.INTRA_OP_THREADS = max(1, int(cpus))
    return collect(onnx.load_from_string(model_bytes), ops, Dataset(x, y, "<ray shard>"), gram_classes,
                   batch_size, device, feature_mode, input_name, None, layouts)


def ray_collect(model: onnx.ModelProto, ops: list[EditableOp], data: Dataset, gram_classes: Iterable[int] | None,
                batch_size: int = 128, device: str = "cpu", feature_mode: str = "auto",
                input_name: str | None = None, progress: Callable[[int], None] | None = None,
                layouts: dict[str, TokenLayout] | None = None, *, address: str | None = None,
                shards: int | None = None, outputs: bool = False, output: str | None = None) -> Statistics:
    """stats.collect with the same arguments, run as Ray tasks on class-aligned shards of data.

    outputs/output are accepted for the same signature but no outputs come back from the tasks
    (Statistics.outputs stays None: the caller predicts instead).
    """
    from onnx_damp.stats.shards import merge

    ray = init_ray(address)
    if proto_size(model) >= 2_000_000_000:
        raise DampError("--ray sends the model to its tasks in one message, which protobuf limits to 2 GB; "
                        "collect shards by hand (onnx-damp collect on each) instead")
    if feature_mode != "auto":
        layouts = {}
    elif layouts is None:  # probe once here so every shard uses the same layouts
        layouts = probe_token_layouts(model, ops, data.x, input_name, device)
    resource = "GPU" if device == "cuda" else "CPU"  # --device cuda: one GPU per task
    if shards is None:
        shards = int(ray.cluster_resources().get(resource, 0))
    if shards < 1:
        raise DampError(f"the Ray cluster has no {resource}")
    parts = class_aligned_shards(data.y, shards)
    keep = None if gram_classes is None else sorted(int(c) for c in gram_classes)
    task = ray.remote(num_gpus=1)(_collect_shard) if device == "cuda" else ray.remote(_collect_shard)
    model_ref = ray.put(model.SerializeToString())
    refs = [task.remote(model_ref, ops, data.x[idx], data.y[idx], keep, batch_size, device, feature_mode,
                        input_name, layouts) for idx in parts]
    sizes = {ref: len(idx) for ref, idx in zip(refs, parts)}
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            ray.get(ready)  # raise early on a failed task
            if progress:
                progress(sizes[ready[0]])
        results = ray.get(refs)
    except Exception as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, DampError):
            raise DampError(str(cause)) from None
        if isinstance(exc, DampError) and cause is None:
            raise
        msg = str(cause or exc).strip().splitlines()
        raise DampError(f"a Ray task failed: {msg[0] if msg else type(exc).__name__}") from None
    return merge(results)
