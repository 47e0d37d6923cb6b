"""atomic_write: the one way the tool writes reports, pages and statistics files."""
import os

import pytest

from onnx_damp.fileio import atomic_write


def test_atomic_write_writes_with_the_usual_mode(tmp_path):
    out = atomic_write(tmp_path / "r.json", lambda f: f.write("{}"))
    assert out.read_text() == "{}"
    umask = os.umask(0)
    os.umask(umask)
    assert (out.stat().st_mode & 0o777) == (0o666 & ~umask)  # not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "s.npz"
    target.write_bytes(b"old")

    def boom(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, boom, binary=True)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["s.npz"]
