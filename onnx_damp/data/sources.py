"""Where data come from: one dispatcher from what the user gave (a Dataset, arrays, an .npz, an image
folder, torchvision's idx or CIFAR files) to a Dataset. Adding a data source is a reader plus a branch here.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from onnx_damp.data.dataset import Dataset, load_npz, validate
from onnx_damp.data.formats import array_dataset, find_torchvision, is_pickle, read_cifar, read_idx_pair
from onnx_damp.data.imagefolder import load_image_folder, looks_like_image_folder
from onnx_damp.data.preprocess import as_preprocess
from onnx_damp.errors import DampError


def as_dataset(data: "Dataset | str | os.PathLike | tuple", preprocess=None,
               class_names: Sequence[str] | None = None) -> Dataset:
    """Accept a Dataset, an (x, y) tuple, or a path: an .npz file, an image folder (DIR/<class>/*.png ...),
    or a torchvision on-disk format (MNIST-style idx files, CIFAR-10/100 python batches).

    preprocess (a Preprocess, a dict of its fields or a .json/.toml path) applies to images only; .npz
    files and arrays are used as they are. class_names map image folder names to class indices.
    """
    if isinstance(data, Dataset):
        return validate(data)
    if isinstance(data, tuple) and len(data) == 2:
        return validate(Dataset(np.asarray(data[0]), np.asarray(data[1])))
    p = Path(data)
    if p.is_dir() or (p.is_file() and p.suffix.lower() != ".npz"):
        ds = open_path(p, preprocess, class_names)
        if ds is not None:
            return validate(ds)
    return load_npz(data)


def open_path(p: Path, preprocess=None, class_names: Sequence[str] | None = None) -> Dataset | None:
    """The data set at p (image folder, idx, CIFAR), or None for a file that is none of these (an .npz?)."""
    pre = as_preprocess(preprocess)
    if p.is_file():
        if p.name.endswith(("-idx3-ubyte", "-idx3-ubyte.gz")):
            return array_dataset(*read_idx_pair(p), pre, f"{p} (idx images)")
        if is_pickle(p):
            x, y = read_cifar([p])
            return array_dataset(x, y, pre, f"{p} (CIFAR batch)")
        return None
    found = find_torchvision(p)
    if len(found) > 1:
        raise DampError(f"{p} holds several data sets ({', '.join(str(f[1]) for f in found)}): give one of them")
    if found:
        kind, where, files = found[0]
        if kind == "idx":
            return array_dataset(*read_idx_pair(files[0]), pre, f"{files[0]} (idx images)")
        x, y = read_cifar(files)
        names = ", ".join(f.name for f in files)
        return array_dataset(x, y, pre, f"{where} (CIFAR batches {names})")
    if looks_like_image_folder(p):
        return load_image_folder(p, pre, class_names)
    raise DampError(f"{p}: not an image folder (DIR/<class>/*.png|jpg|jpeg|bmp|webp), nor MNIST-style idx files, "
                    "nor CIFAR-10/100 python batches")
