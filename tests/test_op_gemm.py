"""The Gemm adapter: transA/transB layouts, weight views, the edit as an input map, feature rows, bias."""
import numpy as np
import pytest

from adapter_checks import check_bias, check_features_last, check_map_is_input_map, check_round_trip, the_op
from onnx_damp.ops.registry import adapter
from tiny_models import gemm_model


@pytest.fixture
def rng():
    return np.random.default_rng(1)


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm_adapter(rng, trans_a, trans_b):
    model, w = gemm_model(rng, d=5, out=3, trans_a=trans_a, trans_b=trans_b)
    op = the_op(model, "Gemm", 5)
    assert op.feature_axis == (0 if trans_a else 1) and adapter(op).chunkable
    check_round_trip(op, w)
    check_bias(model, op, 3)
    q, _ = np.linalg.qr(rng.normal(size=(5, 2)))
    x = rng.normal(size=(5, 4) if trans_a else (4, 5)).astype(np.float32)
    project = (lambda a, p: p @ a) if trans_a else (lambda a, p: a @ p.T)
    check_map_is_input_map(model, op, x, q, 0.5, project)
    check_features_last(op, x, x.T if trans_a else x)
    assert adapter(op).token_candidate(op) == (not trans_a)


def test_gemm_with_a_constant_first_input_is_refused(rng):
    from onnx_damp.ops.gemm import GemmAdapter
    from onnx import helper
    node = helper.make_node("Gemm", ["a_const", "x"], ["y"])
    assert "first (A) input" in GemmAdapter().precheck(node, {"a_const"})
    assert GemmAdapter().precheck(node, {"a_const", "x"}) == ""
