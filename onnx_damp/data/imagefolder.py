"""Image folders, `DIR/<class name>/**/*.{png,jpg,jpeg,bmp,webp}` (torchvision's ImageFolder layout), read lazily.

Only the file list is read up front (and the header of the first image, for the sample shape); pixels are
decoded when rows are indexed, in a thread pool (Pillow releases the GIL while decoding), batch by batch.

Class indices: with class names (--labels or the model's metadata) each folder name must be one of them
(exact, else case-insensitive) or an integer index; without names, folders named by integers are those
class indices, and other folder names are numbered in sorted order, as ImageFolder does; when the folders
name every class 0..K-1 their names serve `--forget NAME` for a model without class names.
"""
from __future__ import annotations

import os
import threading
from dataclasses import replace
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from onnx_damp.data.dataset import Dataset, LazyArray
from onnx_damp.errors import DampError
from onnx_damp.data.preprocess import Preprocess, check_fits, require_pil

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _class_dirs(root: Path) -> list[Path]:
    return sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def _images_under(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if _is_image(f))
    return out


def looks_like_image_folder(root: Path) -> bool:
    """A folder whose sub-folders (at least one) hold image files."""
    try:
        return any(any(_is_image(f.name) for f in d.iterdir() if f.is_file()) or _images_under(d)
                   for d in _class_dirs(root))
    except OSError:
        return False


def class_indices(folders: Sequence[str], class_names: Sequence[str] | None, root: str) -> list[int]:
    """The class index of each folder name (see the module docstring)."""
    if class_names:
        out = []
        for name in folders:
            if name in class_names:
                out.append(list(class_names).index(name))
                continue
            folded = [i for i, n in enumerate(class_names) if n.casefold() == name.casefold()]
            if len(folded) == 1:
                out.append(folded[0])
            elif name.isdigit():
                out.append(int(name))
            else:
                shown = ", ".join(repr(n) for n in class_names[:12]) + (", ..." if len(class_names) > 12 else "")
                raise DampError(f"{root}: folder {name!r} is not a class name of the model (--labels or its "
                                f"class_names metadata); known names: {shown}")
        return out
    if all(n.isdigit() for n in folders):
        return [int(n) for n in folders]
    return list(range(len(folders)))


class LazyImages(LazyArray):
    """Image files decoded and preprocessed when indexed; nothing is held but the file list."""

    def __init__(self, files: Sequence[Path], pre: Preprocess, hw: tuple[int, int], stored_channels: int,
                 source: str, workers: int | None = None):
        self.files = [str(f) for f in files]
        self.pre, self.hw, self.stored_channels, self.source = pre, tuple(hw), stored_channels, source
        self.workers = workers or min(8, os.cpu_count() or 1)
        self._pool = None
        self.class_names: list[str] | None = None
        self._lock = threading.Lock()
        super().__init__(len(self.files), pre.sample_shape(self.hw, stored_channels), pre.dtype)

    def check_fits(self, model_input_shape, input_name: str = "input") -> None:
        check_fits(self.pre, model_input_shape, self.hw, self.stored_channels, self.source, input_name)

    def _decode(self, i: int) -> np.ndarray:
        x = self.pre.apply_image(open_image(self.files[i]))
        if x.shape != self._sample_shape:
            raise DampError(f"{self.files[i]}: preprocessing gives {list(x.shape)} but the first image gives "
                            f"{list(self._sample_shape)}: use --resize and --center-crop so every image has one size")
        return x

    def _rows(self, idx: np.ndarray) -> np.ndarray:
        if len(idx) == 1 or self.workers == 1:
            return np.stack([self._decode(int(i)) for i in idx])
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="onnx-damp-decode")
        return np.stack(list(self._pool.map(self._decode, (int(i) for i in idx))))

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_pool"], state["_lock"] = None, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __copy__(self):
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)  # shares the pool and the lock
        return new


def open_image(path: str):
    """Open and fully decode one image file (one-line error for a file Pillow cannot read)."""
    Image = require_pil()
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy() if im.mode in ("P", "PA") else im
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's errors for truncated or unknown files
        raise DampError(f"cannot decode image {path}: {exc}") from None


def _peek(path: Path) -> tuple[tuple[int, int], int]:
    """(height, width) and stored channel count from the file header, without decoding the pixels."""
    Image = require_pil()
    try:
        with Image.open(path) as im:
            return (im.height, im.width), (1 if im.mode in _GRAY_MODES else 3)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DampError(f"cannot read image {path}: {exc}") from None


def load_image_folder(root: str | os.PathLike, preprocess: Preprocess | None = None,
                      class_names: Sequence[str] | None = None, workers: int | None = None) -> Dataset:
    """A Dataset over DIR/<class>/**/*.{png,jpg,jpeg,bmp,webp} whose x decodes lazily (LazyImages)."""
    require_pil()
    root = Path(root)
    pre = preprocess or Preprocess()
    dirs = _class_dirs(root)
    if not dirs:
        raise DampError(f"{root}: no class folders (expected DIR/<class name>/*.png|jpg|jpeg|bmp|webp)")
    indices = class_indices([d.name for d in dirs], class_names, str(root))
    files: list[Path] = []
    labels: list[int] = []
    for d, c in zip(dirs, indices):
        imgs = _images_under(d)
        if not imgs:
            raise DampError(f"{root}: class folder {d.name!r} holds no {'/'.join(IMAGE_EXTENSIONS)} images")
        files += imgs
        labels += [c] * len(imgs)
    hw, channels = _peek(files[0])
    pre = replace(pre, mode=pre.resolved_mode(channels))  # the first image decides "as stored", for all
    source = f"{root} (image folder, {len(files)} images in {len(dirs)} classes)"
    x = LazyImages(files, pre, hw, channels, str(root), workers)
    if sorted(indices) == list(range(len(dirs))):  # folder names name every class: usable for --forget NAME
        x.class_names = [d.name for _, d in sorted(zip(indices, dirs))]
    return Dataset(x, np.asarray(labels, dtype=np.int64), source)
