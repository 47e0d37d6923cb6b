"""Statistics reduced in float32 inside onnxruntime: as good as float64 where it matters, float64 where asked."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_damp.method import plan as dm
from onnx_damp.data.dataset import Dataset
from onnx_damp.ops.graph import scan_graph
from onnx_damp.runtime.instrument import instrument
from onnx_damp.runtime.predict import predict
from onnx_damp.stats.collector import collect
from onnx_damp.method.pipeline import damp_edit
from onnx_damp.options import MethodOptions

OPSET, IR_VERSION = 17, 8


def mlp(rng, dtype=TensorProto.FLOAT, npdt=np.float32, opset=OPSET, batch="N", d=8, h=12, k=4, bias=0.0):
    """x -> Gemm(d->h, bias) -> Gemm(h->k): the second Gemm reads features whose mean is about `bias`."""
    arrays = {"W1": rng.normal(size=(d, h)).astype(npdt), "b1": np.full(h, bias).astype(npdt),
              "W2": rng.normal(size=(h, k)).astype(npdt), "b2": np.zeros(k, npdt)}
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], name="fc1"),
             helper.make_node("Gemm", ["h", "W2", "b2"], ["y"], name="fc2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", dtype, [batch, d])],
                          [helper.make_tensor_value_info("y", dtype, [batch, k])],
                          [numpy_helper.from_array(a, n) for n, a in arrays.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION)
    onnx.checker.check_model(m)
    return m


def data(rng, n=400, d=8, k=4, npdt=np.float32):
    y = rng.integers(0, k, n)
    return Dataset((rng.normal(size=(n, d)) + y[:, None]).astype(npdt), y)


@pytest.mark.parametrize("bias", [0.0, 1000.0, 3000.0])
def test_float32_reductions_keep_the_variance_of_features_with_a_large_mean(bias):
    """An uncentred float32 Gram loses the variance to cancellation here (alpha 0.24 became 1.0 at 3000)."""
    rng = np.random.default_rng(3)
    m, ds = mlp(rng, bias=bias), data(rng)
    ops = scan_graph(m).editable
    s32 = collect(m, ops, ds, [0], batch_size=128)
    s64 = collect(m, ops, ds, [0], batch_size=128, precision="float64")
    for st in (s32, s64):
        mf, sf, _ = st.layers["fc2"].group_moments([0])
        st.cov = sf - np.outer(mf, mf)
    np.testing.assert_allclose(s32.cov, s64.cov, rtol=1e-4, atol=1e-4 * np.abs(s64.cov).max())
    p32, p64 = (dm.plan(ops, s, [0], [1, 2, 3]) for s in (s32, s64))
    for a, b in zip(p32, p64):
        assert a.rank == b.rank and a.alpha == pytest.approx(b.alpha, abs=1e-6)


@pytest.mark.parametrize("case", ["float16", "float64", "opset9", "opset10", "opset11", "opset12", "fixed_batch"])
def test_statistics_and_outputs_across_dtypes_opsets_and_fixed_batches(case):
    rng = np.random.default_rng(0)
    kw = {"float16": dict(dtype=TensorProto.FLOAT16, npdt=np.float16),
          "float64": dict(dtype=TensorProto.DOUBLE, npdt=np.float64),
          "opset9": dict(opset=9), "opset10": dict(opset=10), "opset11": dict(opset=11), "opset12": dict(opset=12),
          "fixed_batch": dict(batch=8)}[case]
    m = mlp(rng, **kw)
    ds = data(rng, n=40, npdt=kw.get("npdt", np.float32))
    ops = scan_graph(m).editable
    s32 = collect(m, ops, ds, [0], batch_size=7, outputs=True)
    s64 = collect(m, ops, ds, [0], batch_size=7, precision="float64")
    np.testing.assert_allclose(s32.outputs, predict(m, ds), rtol=1e-3, atol=1e-3)
    g32, g64 = s32.layers["fc2"].total_gram, s64.layers["fc2"].total_gram
    np.testing.assert_allclose(g32, g64, rtol=1e-5, atol=1e-6 * np.abs(g64).max())
    # float64 weights, and opsets below 10 (Slice with steps, for the shift's strided rows), keep float64
    _, taps = instrument(m, ops)
    assert all((t.shift_name is None) == (case in ("float64", "opset9")) for t in taps.values())


def test_damp_edit_predicts_the_outputs_a_collector_does_not_return():
    rng = np.random.default_rng(1)
    m, ds = mlp(rng), data(rng, n=80)
    ops = scan_graph(m).editable
    calls = []

    def plain(*args, outputs=False, output=None):  # a Collector that ignores outputs=True: none come back
        calls.append(len(args))
        return collect(*args)

    out = damp_edit(m, ops, ds, [0], [1, 2, 3], MethodOptions(max_passes=2, target_forget_accuracy=-1.0),
                    collector=plain)
    assert len(calls) == 2  # pass 1, and pass 2 (kept or not)
    # without outputs from the collector, the original's outputs are predicted
    np.testing.assert_allclose(out.original_outputs, predict(m, ds), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cap", [1, 2, 1000])
def test_shift_corrections_fold_into_the_kept_gram_and_the_total_whatever_the_cap(cap):
    """sum_b (m_b u_b^T + u_b m_b^T) reaches the kept class's Gram and the total, and the other classes' terms
    reach the total only, whether they are folded in every cap terms or once at the end."""
    from onnx_damp.stats.collector import _ShiftCorrections
    from onnx_damp.stats.statistics import LayerStats

    rng = np.random.default_rng(3)
    d = 6
    st = LayerStats(d)
    pending = _ShiftCorrections({"k": st}, keep={1}, cap=cap)
    want = {c: np.zeros((d, d)) for c in range(3)}
    for c in range(3):
        pending.flush()
        pending.cls = c
        for _ in range(5):
            m, u = rng.normal(size=d), rng.normal(size=d)
            want[c] += np.outer(m, u) + np.outer(u, m)
            pending.add("k", m, u)
    pending.finish()
    assert set(st.grams) == {1}
    np.testing.assert_allclose(st.grams[1], want[1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(st.total_gram, sum(want.values()), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(st.total_gram, st.total_gram.T)
