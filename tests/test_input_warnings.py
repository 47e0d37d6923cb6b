"""Suspicious input gets a warning line, bad input a one-line error (issue 15)."""
import numpy as np
import pytest

import onnx_damp
from mnist_sample import CALIB, MODEL, first_per_class, invoke
from onnx_damp.errors import DampError


@pytest.fixture(scope="module")
def small():
    return first_per_class(CALIB, 30)


def test_unscaled_data_warn_and_strict_refuses_without_writing(small, tmp_path):
    x, y = small
    np.savez(tmp_path / "x255.npz", x=x * 255, y=y)
    r = invoke("forget", MODEL, "--data", tmp_path / "x255.npz", "--forget", 3, "-o", tmp_path / "e.onnx", "-q",
               "--feature-samples", 0)
    assert r.exit_code in (0, 3) and "warning: the original model gets" in r.output and "scaling" in r.output
    r = invoke("forget", MODEL, "--data", tmp_path / "x255.npz", "--forget", 3, "-o", tmp_path / "s.onnx", "-q",
               "--feature-samples", 0, "--strict")
    assert r.exit_code == 2 and r.output.startswith("error: --strict:") and not (tmp_path / "s.onnx").exists()
    good = onnx_damp.forget(MODEL, small, [3], feature_samples=0)
    assert not any("original model gets" in w for w in good.warnings)


def test_missing_classes_are_an_error_unless_allowed(small):
    x, y = small
    part = (x[y < 5], y[y < 5])
    with pytest.raises(DampError, match=r"no samples of class\(es\) 5, 6, 7, 8, 9 \(5 of the model's 10\)"):
        onnx_damp.forget(MODEL, part, [3], feature_samples=0)
    res = onnx_damp.forget(MODEL, part, [3], feature_samples=0, allow_missing_classes=True)
    assert res.retain == [0, 1, 2, 4]


def test_a_labels_file_of_the_wrong_length_is_an_error(small, tmp_path):
    (tmp_path / "l.txt").write_text("\n".join(str(i) for i in range(9)) + "\n")
    with pytest.raises(DampError, match="names 9 classes but the model has 10 outputs"):
        onnx_damp.forget(MODEL, small, [3], labels=tmp_path / "l.txt", feature_samples=0)


def test_a_forget_class_the_original_never_recognised_is_flagged():
    """0% before: FORGOTTEN would say nothing about the edit, so a warning says so; 60% before: no warning."""
    from onnx_damp.api import input_warnings
    from onnx_damp.verify.metrics import AccuracySummary

    def summary(forget_acc):
        return AccuracySummary({0: forget_acc, 1: 0.9, 2: 0.8}, [0], forget_acc, 0.85, 2, 0.8, 300)
    [w] = input_warnings(summary(0.0), "evaluation data")
    assert "already gets 0.0% on the forget class(es)" in w
    assert input_warnings(summary(0.6), "evaluation data") == []
