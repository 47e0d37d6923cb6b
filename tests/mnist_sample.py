"""The shipped MNIST sample as tests use it: paths, per-class slices of its data, and the CLI runner."""
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from onnx_damp.cli import main

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "mnist"
MODEL, CALIB, TEST = SAMPLE / "model.onnx", SAMPLE / "calib.npz", SAMPLE / "test.npz"
REF = SAMPLE / "retrained_without_3.onnx"


def invoke(*args):
    """Run `onnx-damp` with the arguments as strings, through click's CliRunner."""
    return CliRunner().invoke(main, [str(a) for a in args])


def first_per_class(src: Path, per_class: int, keep_order: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The first per_class samples of each class of an .npz: grouped by class, or in file order (keep_order)."""
    with np.load(src, allow_pickle=False) as z:
        x, y = z["x"], z["y"]
    idx = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(10)])
    if keep_order:
        idx = np.sort(idx)
    return x[idx], y[idx]


def subset(src: Path, per_class: int, dst: Path) -> Path:
    """first_per_class of src written to dst (.npz)."""
    x, y = first_per_class(src, per_class)
    np.savez(dst, x=x, y=y)
    return dst


def small_files(folder: Path, test_per_class: int, calib_per_class: int) -> dict:
    """Per-class subsets of the sample's test and calibration data written into folder (module fixtures)."""
    return {"folder": folder, "test": subset(TEST, test_per_class, folder / "test_small.npz"),
            "calib": subset(CALIB, calib_per_class, folder / "calib_small.npz")}
