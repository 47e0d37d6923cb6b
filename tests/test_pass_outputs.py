"""Outputs that come free with the statistics pass (the original's predictions on the fit part), and the
held-out scores the pipeline records being those of the models it returns."""
import numpy as np
import pytest

import onnx_damp
import onnx_damp.method.pipeline as unlearn
from onnx_damp.data.dataset import Dataset
from onnx_damp.ops.graph import scan_graph
from onnx_damp.runtime.modelio import load_model
from onnx_damp.runtime.predict import predict
from onnx_damp.stats.collector import collect

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


def test_outputs_and_heldout_scores_are_those_of_the_models(shuffled):
    proto = load_model(MODEL)
    ops = scan_graph(proto).editable
    retain = [c for c in range(10) if c != 3]
    out = unlearn.damp_edit(proto, ops, shuffled, [3], retain)
    np.testing.assert_allclose(out.original_outputs, predict(proto, shuffled), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.calib_outputs, predict(out.model, shuffled), rtol=1e-5, atol=1e-5)
    held = out.heldout
    assert len(held) == 10 * 8 and len(set(held.tolist())) == len(held)  # 8 of each class's 40 images
    pred, y = predict(out.model, shuffled, indices=held).argmax(1), shuffled.y[held]
    assert out.heldout_score.forget_accuracy == pytest.approx(np.mean(pred[y == 3] == 3))
    rep = predict(out.representation, shuffled, indices=held).argmax(1)
    assert out.passes[0].calib_forget_accuracy == pytest.approx(np.mean(rep[y == 3] == 3))
    assert out.passes[0].calib_retain_accuracy == pytest.approx(np.mean([np.mean(rep[y == c] == c) for c in retain]))


def test_forget_predicts_the_original_only_on_the_heldout_images(monkeypatch):
    import onnx_damp.api as api
    x, y = first_per_class(MODEL.parent / "calib.npz", 30)
    original = load_model(MODEL)
    calls = []
    for mod in (api, unlearn):
        real = mod.predict

        def counting(model, data, *args, _real=real, indices=None, **kwargs):
            same = len(model.graph.initializer) == len(original.graph.initializer) and all(
                a.SerializeToString() == b.SerializeToString()
                for a, b in zip(model.graph.initializer, original.graph.initializer))
            calls.append((same, len(data) if indices is None else len(indices)))
            return _real(model, data, *args, indices=indices, **kwargs)

        monkeypatch.setattr(mod, "predict", counting)
    res = onnx_damp.forget(MODEL, (x, y), [3], feature_samples=0, max_passes=1)
    held = 10 * 6
    # the original: its statistics pass gives its outputs on the fit part; predicted on the held-out part only
    # (and one single-sample run that checks the data fit the model)
    assert sorted(n for same, n in calls if same) == [1, held]
    # the edits: held-out checks (a few) and the returned model once on the rest
    assert sum(n for same, n in calls if not same) <= len(y) + 8 * held
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


def test_session_pool_makes_one_session_per_model(shuffled):
    from onnx_damp.runtime.predict import SessionPool, pooled

    proto = load_model(MODEL)
    pool = SessionPool()
    first = pool.session(proto, shuffled)
    assert pool.session(proto, shuffled) is first
    other = load_model(MODEL)  # an equal model, another object: its own session
    assert pool.session(other, shuffled) is not first
    assert pooled(None, proto, shuffled, None, "cpu") is None
    np.testing.assert_allclose(predict(proto, shuffled, session=first), predict(proto, shuffled), rtol=1e-6)


def test_the_kept_original_session_runs_a_fixed_batch_model_at_a_free_batch(tmp_path):
    """The class-count check keeps the original's session for the job: for a model whose batch is fixed at 1 it
    must be the symbolic-batch twin's (checked on the data's first rows), not the one-image-at-a-time original."""
    from onnx_damp.api import _num_outputs
    from onnx_damp.runtime.batching import fixed_batch_of
    from onnx_damp.runtime.predict import SessionPool

    proto = load_model(MODEL)
    for v in (proto.graph.input[0], proto.graph.output[0]):
        v.type.tensor_type.shape.dim[0].Clear()
        v.type.tensor_type.shape.dim[0].dim_value = 1
    assert fixed_batch_of(proto, None) == 1
    x, y = first_per_class(MODEL.parent / "calib.npz", 3)
    pool = SessionPool()
    assert _num_outputs(proto, Dataset(x, y), None, None, "cpu", pool=pool) == 10
    sess = pool.session(proto, Dataset(x, y))
    assert sess.get_inputs()[0].shape[0] != 1  # symbolic: batches of any size
