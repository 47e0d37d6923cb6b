"""The MatMul adapter: [in, out] weights on the last axis of any-rank inputs, the edit, rows, a following bias Add."""
import numpy as np
import pytest

from adapter_checks import check_bias, check_features_last, check_map_is_input_map, check_round_trip, the_op
from onnx_damp.ops.registry import ADAPTERS, LINEAR_OPS, adapter
from tiny_models import matmul_model


@pytest.fixture
def rng():
    return np.random.default_rng(2)


def test_matmul_adapter(rng):
    model, w = matmul_model(rng, d=5, out=3, tokens=4)
    op = the_op(model, "MatMul", 5)
    assert op.feature_axis == -1 and adapter(op).reads_tokens
    check_round_trip(op, w)
    check_bias(model, op, 3)  # the constant Add right after the MatMul
    q, _ = np.linalg.qr(rng.normal(size=(5, 1)))
    x = rng.normal(size=(2, 4, 5)).astype(np.float32)
    check_map_is_input_map(model, op, x, q, 1.0, lambda a, p: a @ p.T)
    check_features_last(op, x, x.reshape(-1, 5))
    assert isinstance(adapter(op).linear_map(op, w.astype(np.float64), model.graph.node[0]), np.ndarray)


def test_registry_has_one_adapter_and_one_test_file_per_operator_type():
    from pathlib import Path
    assert set(LINEAR_OPS) == set(ADAPTERS) and all(ADAPTERS[t].op_type == t for t in ADAPTERS)
    here = Path(__file__).parent
    assert all((here / f"test_op_{t.lower()}.py").exists() for t in LINEAR_OPS)
