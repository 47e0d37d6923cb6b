"""Wide layers' rows kept through the statistics pass (stats.rows): in memory or spilled to a temporary file,
read back in blocks, projected per class."""
import os

import numpy as np
import pytest

from onnx_damp.stats.rows import KeptRows, can_spill


def _fill(store: KeptRows, x: np.ndarray, y: np.ndarray, batch: int) -> None:
    for c in sorted(set(y.tolist())):  # single-class batches, class by class, as the statistics pass feeds them
        idx = np.flatnonzero(y == c)
        for a in range(0, len(idx), batch):
            store.append(int(c), x[idx[a:a + batch]])


@pytest.mark.parametrize("spill", [False, True])
def test_projected_moments_match_numpy_in_memory_and_spilled(tmp_path, spill):
    """Per-class sums and Grams of x U from the kept rows, read back in blocks of a few rows, equal numpy's on
    the whole class (to rounding); the spilled file is never a named file in the folder."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((90, 13)) + 5).astype(np.float32)
    y = rng.integers(0, 3, 90)
    basis = np.linalg.qr(rng.standard_normal((13, 4)))[0]
    with KeptRows(13, len(x), spill=spill, directory=str(tmp_path), block_bytes=13 * 4 * 7) as store:
        _fill(store, x, y, batch=10)
        assert os.listdir(tmp_path) == []
        st = store.projected(basis)
    for c in range(3):
        xu = x[y == c].astype(np.float64) @ basis
        assert st.rows[c] == (y == c).sum()
        np.testing.assert_allclose(st.sums[c], xu.sum(0), rtol=1e-12)
        np.testing.assert_allclose(st.grams[c], xu.T @ xu, rtol=1e-12)
    np.testing.assert_allclose(st.total_gram, sum(st.grams.values()), rtol=1e-12)


def test_spilled_rows_give_the_in_memory_numbers_bit_for_bit(tmp_path):
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((50, 9)).astype(np.float32), rng.integers(0, 2, 50)
    basis = np.linalg.qr(rng.standard_normal((9, 3)))[0]
    out = []
    for spill in (False, True):
        with KeptRows(9, len(x), spill=spill, directory=str(tmp_path), block_bytes=9 * 4 * 4) as store:
            _fill(store, x, y, batch=6)
            out.append(store.projected(basis))
    assert all(np.array_equal(out[0].grams[c], out[1].grams[c]) for c in (0, 1))
    assert all(np.array_equal(out[0].sums[c], out[1].sums[c]) for c in (0, 1))


def test_float64_rows_stay_float64(tmp_path):
    x = np.full((4, 3), 1 + 2 ** -40, dtype=np.float64)
    with KeptRows(3, 4, spill=True, directory=str(tmp_path)) as store:
        store.append(0, x)
        assert store.dtype == np.float64
        assert np.array_equal(store.read(0, 4), x)


def test_can_spill_needs_room_on_the_disk(tmp_path):
    assert can_spill(1 << 20, str(tmp_path))
    assert not can_spill(1 << 62, str(tmp_path))
    assert not can_spill(1, str(tmp_path / "missing"))


def test_projected_moments_do_not_depend_on_the_number_of_workers(tmp_path):
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((70, 11)).astype(np.float32), rng.integers(0, 3, 70)
    basis = np.linalg.qr(rng.standard_normal((11, 3)))[0]
    with KeptRows(11, len(x), spill=True, directory=str(tmp_path), block_bytes=11 * 4 * 5) as store:
        _fill(store, x, y, batch=8)
        one, three = store.projected(basis, workers=1), store.projected(basis, workers=3)
    assert all(np.array_equal(one.grams[c], three.grams[c]) and np.array_equal(one.sums[c], three.sums[c])
               for c in one.grams)


def test_rows_that_cannot_be_written_leave_the_layer_to_the_second_pass(tmp_path):
    """A write that fails (a disk full since the pass began) releases the store and tells the collector to drop
    the layer's rows (it then takes the second pass), instead of stopping the run."""
    import errno

    from onnx_damp.stats.collector import _keep_rows

    class Full(KeptRows):
        def append(self, c, rows):
            raise OSError(errno.ENOSPC, "No space left on device")

    store = Full(4, 10, spill=True, directory=str(tmp_path))
    assert not _keep_rows(store, 0, np.zeros((3, 4), np.float32), 3)
    assert store._file is None and store._mem is None
    ok = KeptRows(4, 10, directory=str(tmp_path))
    assert _keep_rows(ok, 0, np.ones((3, 4), np.float32), 2) and ok.n == 2  # padded rows past `real` are not kept
    assert not _keep_rows(ok, 0, np.ones((3, 5), np.float32), 3)  # not [batch, d]


@pytest.mark.parametrize("elem,size", [(1, 4), (11, 8), (10, 4)])  # float, double, float16 (kept as float32)
def test_kept_rows_are_sized_by_the_models_input_type(elem, size):
    from onnx import helper

    from onnx_damp.stats.collector import _row_itemsize

    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", elem, ["N", 3])],
                              [helper.make_tensor_value_info("y", elem, ["N", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert _row_itemsize(model, None) == size
