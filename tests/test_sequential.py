"""A second request keeps the first: earlier forgotten classes stay out of the retain span (issue 15)."""
import json

import onnx
import pytest

import onnx_damp
from mnist_sample import CALIB, MODEL, TEST, invoke, subset
from onnx_damp.api import forget_history, forgotten_before


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("seq")
    return subset(CALIB, 40, d / "calib.npz"), subset(TEST, 40, d / "test.npz"), d


def test_a_second_request_forgets_both_and_records_the_history(data):
    calib, test, d = data
    first = onnx_damp.forget(MODEL, calib, [0], d / "no0.onnx", eval_data=test, feature_samples=0)
    assert forgotten_before(first.model) == [0]
    second = onnx_damp.forget(d / "no0.onnx", calib, [5], d / "no0_no5.onnx", eval_data=test, feature_samples=0)
    assert second.forget == [0, 5] and 0 not in second.retain
    assert any("edited by onnx-damp before" in n for n in second.notes)
    saved = onnx.load(str(d / "no0_no5.onnx"))
    hist = forget_history(saved)
    assert [h["classes"] for h in hist] == [[0], [5]] and all(h["version"] == onnx_damp.__version__ for h in hist)
    assert second.after.per_class[0] <= 0.01  # re-checked: class 0 is still forgotten
    # evaluate reads the classes from the model when --forget is not given
    r = invoke("evaluate", d / "no0_no5.onnx", "--data", test, "--json", "-q", "--feature-samples", 0)
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["model"]["forget_classes"] == [0, 5]


def test_evaluate_without_forget_on_an_unedited_model_is_a_user_error(data):
    _, test, _ = data
    r = invoke("evaluate", MODEL, "--data", test, "-q", "--feature-samples", 0)
    assert r.exit_code == 2 and "records no forgotten classes" in r.output


def test_evaluate_warns_when_original_is_not_the_source(data):
    from mnist_sample import REF
    calib, test, d = data
    onnx_damp.forget(MODEL, calib, [3], d / "no3.onnx", feature_samples=0)
    ok = invoke("evaluate", d / "no3.onnx", "--data", test, "--original", MODEL, "-q", "--feature-samples", 0)
    assert ok.exit_code == 0 and "warning:" not in ok.output
    r = invoke("evaluate", d / "no3.onnx", "--data", test, "--original", REF, "-q", "--feature-samples", 0)
    assert r.exit_code == 0 and "warning: --original" in r.output and "is not the model this one was edited from" in r.output
