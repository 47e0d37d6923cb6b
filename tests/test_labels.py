"""Class names: --forget by name from a labels file or the model's class_names metadata."""
from pathlib import Path

import pytest
from click.testing import CliRunner

import onnx_damp
from onnx_damp.cli import main
from onnx_damp.errors import DampError
from onnx_damp.data.labels import read_labels, resolve_classes

FM = Path(__file__).resolve().parent.parent / "samples" / "fashion_mnist"
NAMES = ["cat", "dog", "Ship"]


def test_resolve_indices_and_names():
    assert resolve_classes([2, "0", "dog", "ship"], NAMES) == [2, 0, 1, 2]  # case-insensitive when unique
    with pytest.raises(DampError, match="unknown class name 'cow'"):
        resolve_classes(["cow"], NAMES)
    with pytest.raises(DampError, match="no class names"):
        resolve_classes(["dog"], None)


def test_labels_file(tmp_path):
    good = tmp_path / "labels.txt"
    good.write_text("cat\ndog\nShip\n")
    assert read_labels(good) == NAMES
    bad = tmp_path / "bad.txt"
    bad.write_text("cat\n\ndog\n")
    with pytest.raises(DampError, match="one non-empty class name per line"):
        read_labels(bad)


def test_evaluate_by_metadata_name_equals_by_index():
    by_name = onnx_damp.evaluate(FM / "model.onnx", FM / "test.npz", ["Coat"], feature_samples=0)
    by_index = onnx_damp.evaluate(FM / "model.onnx", FM / "test.npz", [4], feature_samples=0)
    assert by_name.summary.forget_accuracy == by_index.summary.forget_accuracy
    assert by_name.to_dict()["model"] == by_index.to_dict()["model"]


def test_cli_labels_file_and_unknown_name(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"c{i}" for i in range(10)))
    r = CliRunner().invoke(main, ["evaluate", str(FM / "model.onnx"), "--data", str(FM / "test.npz"),
                                  "--forget", "c4", "--labels", str(labels), "--feature-samples", "0", "--json",
                                  "--no-gates"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["evaluate", str(FM / "model.onnx"), "--data", str(FM / "test.npz"),
                                  "--forget", "jacket", "--feature-samples", "0"])
    assert r.exit_code == 2
    assert "unknown class name 'jacket'" in r.output and "Traceback" not in r.output
