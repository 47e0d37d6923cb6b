"""Writing a file atomically: into a temporary file beside it, then one rename; nothing half-written remains.

Light (standard library only): the CLI's report writer imports it.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Callable


def usual_mode(path: str | os.PathLike) -> None:
    """Give path the mode a plain open() would (0666 less the umask): temporary files (mkstemp) and onnx's
    external-data writer create 0600 files another account could not read next to a 0644 model."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = False) -> Path:
    """Call write(f) on a temporary file in path's folder, give it the usual file mode (0666 less the umask,
    not mkstemp's 0600), and rename it to path; on any error the temporary file is removed."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
        usual_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
