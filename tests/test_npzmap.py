""".npz data are read on demand (data/npzmap.py): the same rows as np.load, without loading the member whole."""
import numpy as np
import pytest

from onnx_damp.data.dataset import load_npz
from onnx_damp.data.npzmap import MappedArray
from onnx_damp.errors import DampError


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    return rng.normal(size=(40, 1, 5, 5)).astype(np.float32), rng.integers(0, 4, 40)


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_rows_are_those_of_np_load(tmp_path, arrays, save):
    x, y = arrays
    save(tmp_path / "d.npz", x=x, y=y)
    ds = load_npz(tmp_path / "d.npz")
    assert isinstance(ds.x, MappedArray) and ds.x.shape == x.shape and ds.x.dtype == x.dtype
    idx = np.array([39, 2, 3, 4, 0, 2, 17])  # unsorted, repeated, with a contiguous run
    np.testing.assert_array_equal(ds.x[idx], x[idx])
    np.testing.assert_array_equal(ds.x[5:9], x[5:9])
    np.testing.assert_array_equal(ds.x[7], x[7])
    np.testing.assert_array_equal(ds.x.astype(np.float64)[idx], x[idx].astype(np.float64))  # cast per batch
    np.testing.assert_array_equal(ds.y, y)


def test_non_finite_rows_are_found_in_a_mapped_member(tmp_path, arrays):
    x, y = arrays
    x[11, 0, 2, 2] = np.inf
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(DampError, match="NaN or infinite values in 1 sample"):
        load_npz(tmp_path / "d.npz")


def test_fortran_order_falls_back_to_loading(tmp_path, arrays):
    x, y = arrays
    np.savez(tmp_path / "d.npz", x=np.asfortranarray(x[:, 0]), y=y)
    ds = load_npz(tmp_path / "d.npz")
    assert isinstance(ds.x, np.ndarray)
    np.testing.assert_array_equal(ds.x, x[:, 0])


def test_object_members_are_never_unpickled(tmp_path, arrays):
    _, y = arrays
    np.savez(tmp_path / "d.npz", x=np.array([{"a": 1}] * len(y), dtype=object), y=y)
    with pytest.raises(DampError, match="without pickle"):
        load_npz(tmp_path / "d.npz")


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_mapped_members_pickle(tmp_path, arrays, save):
    """Ray ships data sets to its tasks by pickling them."""
    import pickle
    x, y = arrays
    save(tmp_path / "d.npz", x=x, y=y)
    back = pickle.loads(pickle.dumps(load_npz(tmp_path / "d.npz").x.astype(np.float64)))
    np.testing.assert_array_equal(back[[3, 1]], x[[3, 1]].astype(np.float64))
