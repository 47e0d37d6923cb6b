"""Image folders as data: class mapping, lazy decoding, the fits check, and forget on PNGs == forget on the .npz."""
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PIL")
from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402

import onnx_damp  # noqa: E402
from onnx_damp.data import imagefolder  # noqa: E402
from onnx_damp.cli import main  # noqa: E402
from onnx_damp.data.dataset import prefetch  # noqa: E402
from onnx_damp.data.sources import as_dataset
from onnx_damp.errors import DampError  # noqa: E402
from onnx_damp.data.preprocess import Preprocess  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT / "samples" / "mnist"


def _write(folder: Path, arrays, ext="png"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(folder / f"{i:05d}.{ext}")


def _grey(n, seed=0, size=28):
    return list(np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8))


def _mnist_folder(root: Path, per_class: int | None = None):
    """PNGs (uint8, as build_samples.preprocess() inverts: x * 255) of samples/mnist/calib.npz, and the subset."""
    d = np.load(MNIST / "calib.npz")
    x, y = d["x"], d["y"]
    keep = np.sort(np.concatenate([np.flatnonzero(y == c)[:per_class] for c in np.unique(y)])) \
        if per_class else np.arange(len(y))
    x, y = x[keep], y[keep]
    for i, (img, c) in enumerate(zip(x, y)):
        f = root / str(c)
        f.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(img[0] * 255).astype(np.uint8), "L").save(f / f"{i:05d}.png")
    return x, y


def test_classes_are_sorted_folder_names_and_files_are_read_in_order(tmp_path):
    for name, seed in (("dog", 1), ("cat", 2), ("emu", 3)):
        _write(tmp_path / name, _grey(2, seed), "bmp" if name == "emu" else "png")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    ds = as_dataset(tmp_path)
    np.testing.assert_array_equal(ds.y, [0, 0, 1, 1, 2, 2])      # cat, dog, emu
    assert ds.x.shape == (6, 1, 28, 28) and ds.x.dtype == np.float32
    np.testing.assert_array_equal(ds.x[2][0], _grey(2, 1)[0] / np.float32(255))


def test_folder_names_map_to_class_names_or_indices(tmp_path):
    for name in ("cat", "Dog"):
        _write(tmp_path / "a" / name, _grey(1))
    ds = as_dataset(tmp_path / "a", class_names=["plane", "dog", "bird", "cat"])
    np.testing.assert_array_equal(ds.y, [1, 3])                  # "Dog" sorts first; case-insensitive match
    with pytest.raises(DampError, match=r"folder 'Dog' is not a class name of the model") as e:
        as_dataset(tmp_path / "a", class_names=["cat", "bird"])
    assert "\n" not in str(e.value)
    for name in ("2", "10"):                                     # integer folders are indices, not "10" < "2"
        _write(tmp_path / "b" / name, _grey(1))
    np.testing.assert_array_equal(as_dataset(tmp_path / "b").y, [10, 2])
    (tmp_path / "b" / "empty").mkdir()
    with pytest.raises(DampError, match="class folder 'empty' holds no"):
        as_dataset(tmp_path / "b")


def test_images_are_decoded_only_when_indexed(tmp_path, monkeypatch):
    for c in range(3):
        _write(tmp_path / f"c{c}", _grey(5, c))
    calls = []
    real = imagefolder.open_image
    monkeypatch.setattr(imagefolder, "open_image", lambda p: (calls.append(p), real(p))[1])
    ds = as_dataset(tmp_path)
    assert calls == []                                           # only the file list and one header are read
    x = ds.x.astype(np.float64, copy=False)
    assert calls == [] and x.shape == (15, 1, 28, 28)
    batch = x[np.array([1, 7, 14])]
    assert len(calls) == 3 and batch.dtype == np.float64
    assert sorted(Path(p).parent.name for p in calls) == ["c0", "c1", "c2"]
    assert x[-1].shape == (1, 28, 28) and x[3:5].shape == (2, 1, 28, 28) and len(calls) == 6


def test_prefetch_keeps_order_overlaps_and_reraises():
    seen = []

    def load(b):
        seen.append(threading.current_thread() is threading.main_thread())
        return np.full(2, b)

    out = [(b, x[0]) for b, x in prefetch(range(5), load)]
    assert out == [(b, b) for b in range(5)] and not any(seen)

    def boom(b):
        if b == 2:
            raise DampError("bad image")
        return b
    with pytest.raises(DampError, match="bad image"):
        list(prefetch(range(4), boom))


def test_grey_and_colour_images_mixed_take_the_first_images_mode(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (1, 28, 28, 3), dtype=np.uint8)
    _write(tmp_path / "a", _grey(1) + list(rgb))
    ds = as_dataset(tmp_path)
    assert ds.x[:2].shape == (2, 1, 28, 28)
    np.testing.assert_array_equal(ds.x[1][0] * 255, np.asarray(Image.fromarray(rgb[0]).convert("L")))


def test_images_of_different_sizes_need_a_crop(tmp_path):
    _write(tmp_path / "a", _grey(1, size=28) + _grey(1, size=30))
    ds = as_dataset(tmp_path)
    with pytest.raises(DampError, match="use --resize and --center-crop so every image has one size"):
        ds.x[:2]
    assert as_dataset(tmp_path, Preprocess(center_crop=28)).x[:2].shape == (2, 1, 28, 28)


def test_model_input_is_checked_before_any_image_is_decoded(tmp_path, monkeypatch):
    rgb = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    for c in ("3", "5"):
        _write(tmp_path / c, list(rgb))
    calls = []
    monkeypatch.setattr(imagefolder, "open_image", lambda p: calls.append(p))
    with pytest.raises(DampError) as e:
        onnx_damp.evaluate(MNIST / "model.onnx", tmp_path, [3], feature_samples=0)
    assert "expects [1, 28, 28] (NCHW, 1 channel)" in str(e.value)
    assert str(e.value).endswith("use --mode L and --center-crop 28") and calls == []


def test_importing_the_package_and_help_do_not_import_pillow():
    code = ("import sys; from click.testing import CliRunner; import onnx_damp, onnx_damp.cli as c; "
            "r = CliRunner().invoke(c.main, ['forget', '--help']); assert r.exit_code == 0, r.output; "
            "assert 'image folder' in r.output; print('PIL' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_forget_on_a_png_folder_equals_forget_on_the_npz(tmp_path):
    """samples/mnist/calib.npz (100 per class) as uint8 PNGs: same statistics, same edit, same report."""
    x, y = _mnist_folder(tmp_path / "pngs", per_class=100)
    np.savez(tmp_path / "calib.npz", x=x, y=y)
    (tmp_path / "pre.json").write_text(json.dumps({"mode": "L", "scale": True, "layout": "NCHW"}))
    reports = {}
    for name, data, extra in (("npz", tmp_path / "calib.npz", []),
                              ("png", tmp_path / "pngs", ["--preprocess", str(tmp_path / "pre.json")])):
        rep = tmp_path / f"{name}.json"
        r = CliRunner().invoke(main, ["forget", str(MNIST / "model.onnx"), "--data", str(data), "--forget", "3",
                                      "-o", str(tmp_path / f"{name}.onnx"), "--max-passes", "1",
                                      "--feature-samples", "0", "-q", "--report", str(rep)] + extra)
        assert r.exit_code == 0, r.output
        reports[name] = json.loads(rep.read_text())
    a, b = reports["npz"], reports["png"]
    assert a["calibration_samples"] == b["calibration_samples"] == 1000
    for key in ("before", "after"):
        assert a[key]["forget_accuracy"] == b[key]["forget_accuracy"]
        assert a[key]["retain_accuracy"] == pytest.approx(b[key]["retain_accuracy"], abs=1e-9)
    for node, change in a["relative_change"].items():
        assert b["relative_change"][node] == pytest.approx(change, rel=1e-6)
    for la, lb in zip(a["passes"][0]["layers"], b["passes"][0]["layers"]):   # alpha, rank per layer
        assert (la["node"], la["rank"]) == (lb["node"], lb["rank"])
        assert la["alpha"] == pytest.approx(lb["alpha"], rel=1e-6, abs=1e-9)
        assert la["separability"] == pytest.approx(lb["separability"], rel=1e-6, abs=1e-9)
    assert b["after"]["forget_accuracy"] < 0.05 < b["before"]["forget_accuracy"]


def _nhwc_model():
    """Transpose (NHWC -> NCHW) then tiny_models.conv_model's CNN: a model whose input is [N, 6, 6, 3]."""
    from onnx import TensorProto, helper
    from tiny_models import conv_model, make_model

    base, inits = conv_model(np.random.default_rng(0))
    nodes = [helper.make_node("Transpose", ["img"], ["x"], name="to_nchw", perm=[0, 3, 1, 2])] + list(base.graph.node)
    return make_model(nodes, [helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", 6, 6, 3])],
                      list(base.graph.output), inits)


def test_an_nhwc_model_on_cropped_normalised_images_equals_the_numpy_reference(tmp_path):
    model = _nhwc_model()
    rgb = np.random.default_rng(1).integers(0, 256, (12, 8, 10, 3), dtype=np.uint8)
    y = np.arange(12) % 3
    for c in range(3):
        _write(tmp_path / "imgs" / str(c), list(rgb[y == c]))
    order = np.argsort(y, kind="stable")
    mean, std = np.array([0.5, 0.4, 0.3]), np.array([0.2, 0.25, 0.3])
    ref = ((rgb[order][:, 1:7, 2:8] / 255.0 - mean) / std).astype(np.float32)      # crop 6 of 8x10: top 1, left 2
    pre = {"center_crop": 6, "mean": list(mean), "std": list(std), "layout": "NHWC"}
    a = onnx_damp.evaluate(model, tmp_path / "imgs", [1], feature_samples=0, preprocess=pre)
    b = onnx_damp.evaluate(model, (ref, y[order]), [1], feature_samples=0)
    assert a.to_dict() == b.to_dict()
    named = tmp_path / "named"
    for c, name in enumerate(("ant", "bee", "cow")):                         # no names in the model: folders
        _write(named / name, list(rgb[y == c]))
    assert onnx_damp.evaluate(model, named, ["bee"], feature_samples=0, preprocess=pre).to_dict() == b.to_dict()
    with pytest.raises(DampError, match=r"expects \[6, 6, 3\] \(NHWC, 3 channels\).*use --layout NHWC$"):
        onnx_damp.evaluate(model, tmp_path / "imgs", [1], feature_samples=0, preprocess={"center_crop": 6})


def test_collect_on_a_png_folder_records_the_preprocessing_and_refuses_other_shards(tmp_path):
    """`collect` reads image folders too; shards made with different preprocessing do not merge."""
    _mnist_folder(tmp_path / "a", per_class=20)
    _mnist_folder(tmp_path / "b", per_class=20)
    outs = []
    for name, extra in (("a", ["--mode", "L"]), ("b", ["--mode", "L", "--no-scale"])):
        out = tmp_path / f"{name}.npz"
        r = CliRunner().invoke(main, ["collect", str(MNIST / "model.onnx"), "--data", str(tmp_path / name),
                                      "-o", str(out), "-q"] + extra)
        assert r.exit_code == 0, r.output
        outs.append(out)
    a, b = (onnx_damp.Statistics.load(p) for p in outs)
    assert json.loads(a.provenance.preprocessing)["mode"] == "L"
    assert a.provenance.preprocessing != b.provenance.preprocessing
    with pytest.raises(DampError, match="preprocessing"):
        onnx_damp.merge([a, b])
