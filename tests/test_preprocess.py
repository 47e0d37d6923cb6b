"""Preprocess: the arithmetic against a numpy reference, files (JSON/TOML, unknown keys), and the fits check."""
import sys

import numpy as np
import pytest

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from onnx_damp.errors import DampError  # noqa: E402
from onnx_damp.data.preprocess import Preprocess, check_fits, require_pil, resized_hw  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _rgb(h=40, w=50, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_resize_crop_scale_normalise_and_layout_equal_a_numpy_reference():
    a = _rgb()
    pre = Preprocess(resize=32, center_crop=28, mode="RGB", mean=MEAN, std=STD)
    got = pre.apply_image(Image.fromarray(a))
    # reference: torchvision's Resize(32) size rule, Pillow bilinear, CenterCrop(28), ToTensor, Normalize
    assert resized_hw(40, 50, 32) == (32, 40) and resized_hw(50, 40, 32) == (40, 32)
    r = np.asarray(Image.fromarray(a).resize((40, 32), Image.BILINEAR), dtype=np.float64)
    top, left = int(round((32 - 28) / 2)), int(round((40 - 28) / 2))
    ref = (r[top:top + 28, left:left + 28] / 255.0 - np.array(MEAN)) / np.array(STD)
    assert got.shape == (3, 28, 28) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref.transpose(2, 0, 1), atol=1e-5)
    nhwc = Preprocess(resize=32, center_crop=28, mean=MEAN, std=STD, layout="NHWC").apply_image(Image.fromarray(a))
    np.testing.assert_allclose(nhwc, ref, atol=1e-5)


def test_grey_mode_no_scale_and_a_rectangular_crop():
    a = _rgb(30, 30, 1)
    got = Preprocess(center_crop="20x24", mode="L", scale=False, dtype="float64").apply_image(Image.fromarray(a))
    grey = np.asarray(Image.fromarray(a).convert("L"), dtype=np.float64)
    assert got.shape == (1, 20, 24) and got.dtype == np.float64
    np.testing.assert_array_equal(got[0], grey[5:25, 3:27])


def test_arrays_are_preprocessed_like_decoded_images():
    """The torchvision-format path (numpy arrays) matches the Pillow path, colour conversion included."""
    imgs = np.stack([_rgb(36, 36, s) for s in range(3)])
    for pre in (Preprocess(mode="L", mean=[0.5], std=[0.25]), Preprocess(resize=30, center_crop=28),
                Preprocess(mode="RGB", layout="NHWC", scale=False)):
        ref = np.stack([pre.apply_image(Image.fromarray(a)) for a in imgs])
        np.testing.assert_allclose(pre.apply_array(imgs), ref, atol=1e-6)
    grey = imgs[..., 0]
    pre = Preprocess(mode="RGB")
    ref = np.stack([pre.apply_image(Image.fromarray(a, "L")) for a in grey])
    np.testing.assert_array_equal(pre.apply_array(grey), ref)


def test_json_and_toml_round_trip_and_unknown_keys_are_refused(tmp_path):
    pre = Preprocess(resize=256, center_crop=[224, 200], mode="RGB", mean=MEAN, std=STD, layout="NHWC")
    pre.save(tmp_path / "p.json")
    assert Preprocess.load(tmp_path / "p.json") == pre
    if sys.version_info >= (3, 11):
        pre.save(tmp_path / "p.toml")
        assert Preprocess.load(tmp_path / "p.toml") == pre
    (tmp_path / "bad.json").write_text('{"resize": 32, "crop": 28}')
    with pytest.raises(DampError, match=r"unknown preprocessing key\(s\) \['crop'\]") as e:
        Preprocess.load(tmp_path / "bad.json")
    assert "\n" not in str(e.value)
    for bad in ({"mode": "CMYK"}, {"layout": "CHW"}, {"resize": 0}, {"std": [0.0]}, {"center_crop": "a"}):
        with pytest.raises(DampError):
            Preprocess.from_dict(bad)


def test_overrides_replace_only_what_is_given():
    pre = Preprocess(resize=32, mean=[0.5]).updated(resize=None, center_crop="28", scale=False)
    assert (pre.resize, pre.center_crop, pre.scale, pre.mean) == (32, (28, 28), False, (0.5,))


def test_fits_check_says_what_to_change():
    assert check_fits(Preprocess(), [None, 1, 28, 28], (28, 28), 1) == (1, 28, 28)
    with pytest.raises(DampError) as e:
        check_fits(Preprocess(), [None, 1, 28, 28], (32, 32), 3, "imgs")
    msg = str(e.value)
    assert "expects [1, 28, 28] (NCHW, 1 channel)" in msg and "[3, 32, 32]" in msg
    assert msg.endswith("use --mode L and --center-crop 28")
    with pytest.raises(DampError, match="use --layout NHWC$"):
        check_fits(Preprocess(), [None, 28, 28, 3], (28, 28), 3)
    with pytest.raises(DampError, match="use --resize 224 and --center-crop 224$"):
        check_fits(Preprocess(mode="RGB"), [None, 3, 224, 224], (500, 375), 3)
    with pytest.raises(DampError, match="--mean has 3 values but --mode L gives 1 channel"):
        check_fits(Preprocess(mode="L", mean=MEAN), [None, 1, 28, 28], (28, 28), 3)


def test_missing_pillow_is_a_one_line_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(DampError, match=r"pip install 'onnx-damp\[images\]'"):
        require_pil()
