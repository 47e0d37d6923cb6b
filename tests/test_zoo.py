"""A third-party model end to end: the ONNX Model Zoo's mnist-8 (CNTK 2.5, opset 8, batch fixed at 1,
weights also listed as graph inputs, MatMul head with a separate Add bias), on the shipped MNIST subsets
(the same preprocessing: [0, 1], NCHW). Bounds of bench/zoo.py on held-out test images."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import onnx_damp

ROOT = Path(__file__).resolve().parent.parent
ZOO = json.loads((ROOT / "zoo" / "zoo.json").read_text())
MNIST = ROOT / "samples" / "mnist"


def test_every_zoo_model_is_shipped_with_its_licence():
    for name, m in ZOO["models"].items():
        folder = (ROOT / "zoo" / m["file"]).parent
        assert (ROOT / "zoo" / m["file"]).exists(), name
        assert any(p.name.startswith("LICENSE") for p in folder.iterdir()), name


@pytest.mark.parametrize("forget", [[3], [4, 9]])
def test_cntk_mnist_forgets_within_bounds(forget, tmp_path):
    model = ROOT / "zoo" / ZOO["models"]["mnist_cntk_zoo8"]["file"]
    res = onnx_damp.forget(model, MNIST / "calib.npz", forget, output=tmp_path / "out.onnx",
                           eval_data=MNIST / "test.npz", feature_samples=0)
    drops = {c: res.before.per_class[c] - res.after.per_class[c] for c in res.retain}
    assert res.before.forget_accuracy > 0.97
    assert res.after.forget_accuracy <= 0.01
    assert res.before.retain_accuracy - res.after.retain_accuracy <= 0.01
    assert max(drops.values()) <= 0.03
    assert res.readout.applied and res.readout.node == "Times212"  # the MatMul head's Add bias
    assert res.stages["representation"]["forget_accuracy"] > res.after.forget_accuracy  # DAMP alone: not enough
    assert not res.warnings
