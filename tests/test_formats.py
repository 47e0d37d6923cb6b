"""torchvision's on-disk formats read natively: MNIST-style idx files and CIFAR python batches (safely)."""
import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnx_damp.cli import main
from onnx_damp.data.sources import as_dataset
from onnx_damp.errors import DampError
from onnx_damp.data.formats import load_batch, read_idx
from onnx_damp.data.preprocess import Preprocess

MNIST = Path(__file__).resolve().parents[1] / "samples" / "mnist"


def _idx(path: Path, a: np.ndarray, gz: bool):
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}[a.dtype]
    data = b"\0\0" + bytes([code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(a.dtype.newbyteorder(">")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    (gzip.open if gz else open)(str(path) + (".gz" if gz else ""), "wb").write(data)


def _mnist_raw(folder: Path, n=20, seed=0, gz=True, split="train"):
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)
    _idx(folder / f"{split}-images-idx3-ubyte", x, gz)
    _idx(folder / f"{split}-labels-idx1-ubyte", y, gz)
    return x, y


def test_idx_reader_round_trips_and_refuses_other_files(tmp_path):
    a = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
    _idx(tmp_path / "a", a, gz=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), a)
    (tmp_path / "b").write_bytes(b"PK\3\4 not idx")
    with pytest.raises(DampError, match="not an idx file"):
        read_idx(tmp_path / "b")


def test_mnist_folders_in_every_torchvision_layout(tmp_path):
    x, y = _mnist_raw(tmp_path / "MNIST" / "raw")
    xt, yt = _mnist_raw(tmp_path / "MNIST" / "raw", 7, seed=1, split="t10k")
    for where in (tmp_path, tmp_path / "MNIST", tmp_path / "MNIST" / "raw"):   # root, <Name>, <Name>/raw: train
        ds = as_dataset(where)
        assert ds.x.shape == (20, 1, 28, 28) and "train-images" in ds.source
        np.testing.assert_array_equal(ds.y, y)
        np.testing.assert_allclose(ds.x[np.arange(20)][:, 0], x / np.float32(255))
    test = as_dataset(tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz")    # the test split: its file
    np.testing.assert_array_equal(test.y, yt)
    _mnist_raw(tmp_path / "FashionMNIST" / "raw", gz=False)
    with pytest.raises(DampError, match="holds several data sets"):
        as_dataset(tmp_path)
    assert len(as_dataset(tmp_path / "FashionMNIST")) == 20
    flat = tmp_path / "plain"
    _mnist_raw(flat, gz=False)
    pre = Preprocess(mode="RGB", mean=[0.5], std=[0.5], layout="NHWC")
    ds = as_dataset(flat, pre)
    assert ds.x.shape == (20, 28, 28, 3)
    np.testing.assert_allclose(ds.x[:20], np.repeat(((x / 255.0 - 0.5) / 0.5)[..., None], 3, axis=-1), atol=1e-6)


def _cifar(folder: Path, files, per_file=4, fine=False, protocol=2, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for name in files:
        data = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 100 if fine else 10, per_file)]
        d = {b"batch_label": b"training batch", b"data": data, b"filenames": [b"x.png"] * per_file}
        d.update({b"fine_labels": labels, b"coarse_labels": [0] * per_file} if fine else {b"labels": labels})
        (folder / name).write_bytes(pickle.dumps(d, protocol=protocol))
        out.append((data, labels))
    return out


def test_cifar10_and_cifar100_batches(tmp_path):
    batches = _cifar(tmp_path / "cifar-10-batches-py", [f"data_batch_{i}" for i in (1, 2, 10)])
    _cifar(tmp_path / "cifar-10-batches-py", ["test_batch"], protocol=4, seed=5)
    ds = as_dataset(tmp_path)                                 # torchvision root: the train batches, in order
    assert ds.x.shape == (12, 3, 32, 32) and "data_batch_1, data_batch_2, data_batch_10" in ds.source
    data = np.concatenate([b[0] for b in batches])
    np.testing.assert_array_equal(ds.y, sum((b[1] for b in batches), []))
    np.testing.assert_allclose(ds.x[:12], data.reshape(-1, 3, 32, 32) / np.float32(255))
    test = as_dataset(tmp_path / "cifar-10-batches-py" / "test_batch")
    assert len(test) == 4
    c100 = _cifar(tmp_path / "c100" / "cifar-100-python", ["train", "test"], fine=True, protocol=3)
    (tmp_path / "c100" / "cifar-100-python" / "meta").write_bytes(pickle.dumps({b"fine_label_names": []}))
    ds = as_dataset(tmp_path / "c100", Preprocess(mode="L", layout="NHWC", scale=False))
    np.testing.assert_array_equal(ds.y, c100[0][1])
    rgb = c100[0][0].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float64)
    luma = np.floor((rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) / 65536)
    np.testing.assert_array_equal(ds.x[:4][..., 0], luma)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("payload", ["os.system", "eval", "object array"])
def test_a_malicious_pickle_is_refused_not_executed(tmp_path, payload):
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    if payload == "os.system":
        obj = {b"data": _Evil(marker), b"labels": [0]}
    elif payload == "eval":
        class E:
            def __reduce__(self):
                return eval, (f"open({str(marker)!r}, 'w')",)
        obj = {b"data": E(), b"labels": [0]}
    else:
        obj = {b"data": np.array([_Evil(marker)], dtype=object), b"labels": [0]}
    (folder / "data_batch_1").write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(DampError) as e:
        as_dataset(tmp_path)
    assert "\n" not in str(e.value) and not marker.exists()
    assert ("refusing to unpickle" in str(e.value)) or "object arrays are not allowed" in str(e.value)
    with pytest.raises(DampError):
        load_batch(folder / "data_batch_1")
    assert not marker.exists()


def test_evaluate_reads_mnist_idx_files_from_the_cli(tmp_path):
    d = np.load(MNIST / "test.npz")
    x = np.round(d["x"][:300, 0] * 255).astype(np.uint8)
    y = d["y"][:300].astype(np.uint8)
    _idx(tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte", x, gz=True)
    _idx(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", y, gz=True)
    np.savez(tmp_path / "test.npz", x=(x / np.float32(255))[:, None], y=y.astype(np.int64))
    outs = []
    for data in (tmp_path / "test.npz", tmp_path / "MNIST"):
        r = CliRunner().invoke(main, ["evaluate", str(MNIST / "model.onnx"), "--data", str(data), "--forget", "3",
                                      "--feature-samples", "0", "--json", "-q", "--no-gates"])
        assert r.exit_code == 0, r.output
        outs.append(r.output)
    assert outs[0] == outs[1]
    r = CliRunner().invoke(main, ["evaluate", str(MNIST / "model.onnx"), "--data", str(tmp_path / "MNIST"),
                                  "--forget", "3", "--mode", "RGB", "-q"])
    assert r.exit_code == 2 and r.output.strip().endswith("use --mode L")


def _py2_batch(data: np.ndarray, labels) -> bytes:
    """A CIFAR batch as Python 2's cPickle wrote the real files: str (latin-1) data, numpy.core globals."""
    def s(b: bytes) -> bytes:  # BINSTRING: a Python 2 str
        return b"T" + struct.pack("<i", len(b)) + b
    n, d = data.shape
    return (b"\x80\x02}q\x00(" + s(b"data")
            + b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + s(b"b") + b"\x87R"
            + b"(K\x01J" + struct.pack("<i", n) + b"J" + struct.pack("<i", d) + b"\x86cnumpy\ndtype\n" + s(b"u1")
            + b"K\x00K\x01\x87R(K\x03" + s(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89"
            + s(data.tobytes()) + b"tb" + s(b"labels") + b"](" + b"".join(b"K" + bytes([v]) for v in labels)
            + b"eu.")


def test_python2_pickles_like_the_published_cifar_files(tmp_path):
    data = np.random.default_rng(3).integers(0, 256, (3, 3072), dtype=np.uint8)
    (tmp_path / "test_batch").write_bytes(_py2_batch(data, [7, 0, 9]))
    ds = as_dataset(tmp_path / "test_batch")
    np.testing.assert_array_equal(ds.y, [7, 0, 9])
    np.testing.assert_allclose(ds.x[:3], data.reshape(3, 3, 32, 32) / np.float32(255))


def test_non_finite_rows_are_counted_across_chunks():
    """The finiteness check runs in chunks (no full-size mask) and still counts every bad sample once."""
    from onnx_damp.data.dataset import _non_finite_rows

    x = np.zeros((50, 3, 4), dtype=np.float32)
    x[0, 0, 0] = np.nan
    x[7, 2, 3] = np.inf
    x[7, 1, 1] = -np.inf   # two bad values, one sample
    x[49, 1, 2] = np.nan
    for chunk in (1, 48, 100, 1 << 20):   # bytes per chunk: one row per chunk, 1 row, 2 rows, everything
        assert _non_finite_rows(x, chunk_bytes=chunk) == 3
    assert _non_finite_rows(np.zeros((5, 2), dtype=np.float64)) == 0
