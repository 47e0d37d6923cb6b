"""End to end on the shipped real samples: quality bounds on held-out test data.

Bounds (the project's): forget-class accuracy <= 1%, mean retain accuracy drop <= 1 point, no retain
class down more than 3 points, and outputs on forget-class test images closer (Jensen-Shannon) to the
model retrained without the class than the original's. bench/quality.py runs every class and pair.
The resnet18 test is opt-in (ONNX_DAMP_SLOW_TESTS=1): it takes minutes on a CPU.
"""
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnx_damp
from onnx_damp.verify.metrics import worst_retain_drop

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
CASES = [("mnist", [3]), ("fashion_mnist", [0]), ("mnist", [3, 5]), ("fashion_mnist", [2, 7]), ("vit_mnist", [2])]


@pytest.mark.parametrize("sample,forget", CASES, ids=[f"{s}-{'+'.join(map(str, f))}" for s, f in CASES])
def test_forget_meets_quality_bounds_on_held_out_data(tmp_path, sample, forget):
    folder = SAMPLES / sample
    out = tmp_path / "edited.onnx"
    res = onnx_damp.forget(folder / "model.onnx", folder / "calib.npz", forget, output=out,
                           eval_data=folder / "test.npz")
    assert res.validated_on == "evaluation data"
    assert res.before.forget_accuracy > 0.8
    assert res.after.forget_accuracy <= 0.01
    assert res.before.retain_accuracy - res.after.retain_accuracy <= 0.01
    _, drop = worst_retain_drop(res.before, res.after)
    assert drop <= 0.03
    # the file written is the model that was validated
    ev = onnx_damp.evaluate(out, folder / "test.npz", forget, original=folder / "model.onnx")
    assert ev.summary.forget_accuracy == pytest.approx(res.after.forget_accuracy)
    assert ev.summary.retain_accuracy == pytest.approx(res.after.retain_accuracy)
    assert 0.0 < ev.retain_agreement < 1.0
    ref = folder / f"retrained_without_{'_'.join(map(str, forget))}.onnx"
    if ref.exists():
        js = onnx_damp.evaluate(out, folder / "test.npz", forget, original=folder / "model.onnx",
                                reference=ref).reference_js
        assert js["model"]["forget"] < js["original"]["forget"]


def test_edited_model_keeps_topology_and_records_the_edit(tmp_path):
    folder = SAMPLES / "mnist"
    out = tmp_path / "edited.onnx"
    res = onnx_damp.forget(folder / "model.onnx", folder / "calib.npz", [3], output=out, max_passes=1)
    src, dst = onnx.load(str(folder / "model.onnx")), onnx.load(str(out))
    onnx.checker.check_model(dst)
    assert [n.SerializeToString() for n in dst.graph.node] == [n.SerializeToString() for n in src.graph.node]
    assert dst.graph.input == src.graph.input and dst.graph.output == src.graph.output
    assert dst.opset_import == src.opset_import and dst.ir_version == src.ir_version
    changed = [t.name for t, u in zip(src.graph.initializer, dst.graph.initializer)
               if not np.array_equal(onnx.numpy_helper.to_array(t), onnx.numpy_helper.to_array(u))]
    readout = {res.readout.bias} if res.readout.applied else set()
    assert changed and all(n.endswith("weight") for n in set(changed) - readout)  # biases: the readout's only
    meta = {p.key: p.value for p in dst.metadata_props}
    assert meta["onnx_damp.version"] == onnx_damp.__version__ and meta["onnx_damp.passes"] == "1"


def test_vit_class_token_statistics_move_forget_outputs_toward_the_retrained_model(tmp_path):
    """ViT (TorchScript export): token layouts are found, and forgetting 7 moves outputs toward the reference."""
    folder = SAMPLES / "vit_mnist"
    out = tmp_path / "edited.onnx"
    res = onnx_damp.forget(folder / "model.onnx", folder / "calib.npz", [7], output=out,
                           eval_data=folder / "test.npz", feature_samples=0)
    layouts = res.to_dict()["token_layouts"]
    assert any(v.endswith("axis 0") for v in layouts.values())       # [T, N, D] attention input
    assert any(v.endswith("axis 1") for v in layouts.values())       # [N, T, D] MLP input
    assert any("token-major" in v for v in layouts.values())         # [T*N, D] out-projection Gemm
    assert res.after.forget_accuracy < 0.05 < res.before.forget_accuracy
    js = onnx_damp.evaluate(out, folder / "test.npz", [7], original=folder / "model.onnx",
                            reference=folder / "retrained_without_7.onnx").reference_js
    assert js["model"]["forget"] < 0.5 * js["original"]["forget"]


def test_vit_fashion_forgets_shirt_and_moves_toward_the_retrained_model():
    """ViT on Fashion-MNIST, Shirt (6, the hardest class): forgotten to a few percent in three passes (not to
    1%: bench/quality.py measures 5.2%), the retain classes do not lose accuracy, and the outputs on shirts move
    most of the way to the model retrained without them."""
    folder = SAMPLES / "vit_fashion"
    res = onnx_damp.forget(folder / "model.onnx", folder / "calib.npz", [6], eval_data=folder / "test.npz",
                           reference=folder / "retrained_without_6.onnx", feature_samples=0)
    assert res.before.forget_accuracy > 0.6
    assert res.after.forget_accuracy < 0.08
    assert res.before.retain_accuracy - res.after.retain_accuracy <= 0.01
    js = res.reference_js
    assert js["model"]["forget"] < 0.5 * js["original"]["forget"]


@pytest.mark.skipif(not os.environ.get("ONNX_DAMP_SLOW_TESTS"),
                    reason="about 3 CPU-minutes (resnet18, 11 M parameters); set ONNX_DAMP_SLOW_TESTS=1 to run it")
def test_resnet18_fashion_forgets_t_shirt_within_bounds():
    """torchvision resnet18 (TorchScript export, BatchNorm folded, 21 Conv/Gemm): T-shirt/top (0) forgotten in one
    pass within the project's bounds, outputs on T-shirts closer to the model retrained without them.

    Opt-in: even on 50 images per class it takes over 30 CPU-seconds (resnet18 inference, and per-layer
    eigendecompositions that do not shrink with the data), which the default suite cannot afford."""
    folder = SAMPLES / "resnet18_fashion"
    res = onnx_damp.forget(folder / "model.onnx", folder / "calib.npz", [0], eval_data=folder / "test.npz",
                           reference=folder / "retrained_without_0.onnx", feature_samples=0)
    assert len(res.passes) == 1
    assert res.before.forget_accuracy > 0.8
    assert res.after.forget_accuracy <= 0.01
    assert res.before.retain_accuracy - res.after.retain_accuracy <= 0.01
    _, drop = worst_retain_drop(res.before, res.after)
    assert drop <= 0.03
    js = res.reference_js
    assert js["model"]["forget"] < js["original"]["forget"]
