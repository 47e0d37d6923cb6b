"""Outputs that come free with the DAMP passes: the original's predictions from its statistics pass, and a
stopping rule that predicts only the forget-class samples."""
import numpy as np
import pytest

import onnx_damp
import onnx_damp.unlearn as unlearn
from onnx_damp import damp as dm
from onnx_damp.data import Dataset
from onnx_damp.graph import scan_graph
from onnx_damp.modelio import load_model
from onnx_damp.predict import predict
from onnx_damp.stats import collect

from mnist_sample import MODEL, first_per_class


@pytest.fixture(scope="module")
def shuffled():
    x, y = first_per_class(MODEL.parent / "calib.npz", 40, keep_order=True)
    order = np.random.default_rng(0).permutation(len(y))  # classes interleaved: batches reorder samples
    return Dataset(x[order], y[order])


def test_statistics_pass_keeps_outputs_in_data_order(shuffled):
    proto = load_model(MODEL)
    st = collect(proto, scan_graph(proto).editable, shuffled, [3], batch_size=16, outputs=True)
    np.testing.assert_allclose(st.outputs, predict(proto, shuffled), rtol=1e-5, atol=1e-5)
    assert collect(proto, scan_graph(proto).editable, shuffled, [3], batch_size=16).outputs is None


def test_predict_indices_picks_rows(shuffled):
    proto = load_model(MODEL)
    idx = np.array([5, 0, 17, 3])
    np.testing.assert_array_equal(predict(proto, shuffled, indices=idx), predict(proto, shuffled)[idx])


def test_passes_reuse_outputs_and_record_every_accuracy(shuffled, monkeypatch):
    proto = load_model(MODEL)
    ops = scan_graph(proto).editable
    predicted = []
    real_predict = unlearn.predict

    def counting(model, data, *args, indices=None, **kwargs):
        predicted.append(len(data) if indices is None else len(indices))
        return real_predict(model, data, *args, indices=indices, **kwargs)

    monkeypatch.setattr(unlearn, "predict", counting)
    monkeypatch.setattr(unlearn, "forget_accuracy", lambda *a: 1.0)  # never reach the target: 2 passes
    retain = [c for c in range(10) if c != 3]
    out = unlearn.damp_edit(proto, ops, shuffled, [3], retain, max_passes=2)
    n, nf = len(shuffled), int(np.sum(shuffled.y == 3))
    # pass 1: forget samples only (its retain accuracy comes with pass 2's statistics); pass 2: forget, then the rest
    assert predicted == [nf, nf, n - nf]
    np.testing.assert_allclose(out.original_outputs, predict(proto, shuffled), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.calib_outputs, predict(out.model, shuffled), rtol=1e-5, atol=1e-5)
    assert all(p.calib_retain_accuracy is not None for p in out.passes)
    # pass 1's retain accuracy is that of the model after one pass
    one = load_model(MODEL)
    dm.apply(one, out.passes[0].plans)
    pred, y = predict(one, shuffled).argmax(1), shuffled.y
    expected = np.mean([np.mean(pred[y == c] == c) for c in retain])
    assert out.passes[0].calib_retain_accuracy == pytest.approx(expected)


def test_forget_on_calibration_data_predicts_each_model_once(monkeypatch):
    import onnx_damp.api as api
    x, y = first_per_class(MODEL.parent / "calib.npz", 30)
    calls = []
    for mod in (api, unlearn):
        real = mod.predict

        def counting(model, data, *args, _real=real, indices=None, **kwargs):
            calls.append(len(data) if indices is None else len(indices))
            return _real(model, data, *args, indices=indices, **kwargs)

        monkeypatch.setattr(mod, "predict", counting)
    res = onnx_damp.forget(MODEL, (x, y), [3], feature_samples=0, max_passes=1)
    # the edited model once (forget samples, then the rest); the original came with its statistics;
    # besides, one single-sample run checks that the data fit the model
    assert sum(c for c in calls if c > 1) == len(y) and calls.count(1) == 1
    assert res.before.forget_accuracy > 0.9 and res.after.forget_accuracy < res.before.forget_accuracy


def test_forget_takes_the_variance_bar_and_refuses_an_unknown_one():
    from onnx_damp.errors import DampError

    x, y = first_per_class(MODEL.parent / "calib.npz", 30)
    energy = onnx_damp.forget(MODEL, (x, y), [3], feature_samples=0, max_passes=1)
    variance = onnx_damp.forget(MODEL, (x, y), [3], feature_samples=0, max_passes=1, extra_bar="variance")
    ranks = [[p.rank for p in r.passes[0].plans] for r in (energy, variance)]
    assert ranks[0] != ranks[1]  # the bar decides how many extra directions join
    with pytest.raises(DampError, match="extra_bar must be one of"):
        onnx_damp.forget(MODEL, (x, y), [3], extra_bar="mean")


def test_predict_of_no_samples_keeps_the_class_axis(shuffled):
    out = predict(load_model(MODEL), shuffled, indices=np.array([], dtype=np.int64))
    assert out.shape == (0, 10)
