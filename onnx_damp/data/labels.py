"""Class names: from a labels file (line i = class i) or the model's `class_names` metadata; names -> indices."""
from __future__ import annotations

import json
import os
from typing import Sequence

import onnx

from onnx_damp.errors import DampError

METADATA_KEYS = ("class_names", "classes", "labels")


def read_labels(path: str | os.PathLike) -> list[str]:
    """One class name per line (line i names class i); surrounding blank lines are ignored."""
    try:
        text = open(path, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as exc:
        raise DampError(f"cannot read labels file {os.fspath(path)!r}: {exc}") from None
    names = [line.strip() for line in text.strip().splitlines()]
    if not names or any(not n for n in names):
        raise DampError(f"labels file {os.fspath(path)!r} needs one non-empty class name per line")
    return names


def metadata_names(model: onnx.ModelProto) -> list[str] | None:
    """Class names stored in the model's metadata_props as a JSON list (e.g. key `class_names`), if any."""
    props = {p.key: p.value for p in model.metadata_props}
    for key in METADATA_KEYS:
        try:
            value = json.loads(props[key]) if key in props else None
        except json.JSONDecodeError:
            continue
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return value
    return None


def resolve_classes(classes: Sequence, names: Sequence[str] | None) -> list[int]:
    """Turn each class given as an index (int or digit string) or a class name into an index."""
    out = []
    for c in classes:
        if isinstance(c, int) or (isinstance(c, str) and c.strip().lstrip("-").isdigit()):
            out.append(int(c))
            continue
        out.append(_index_of(str(c), names))
    return out


def _index_of(name: str, names: Sequence[str] | None) -> int:
    if not names:
        raise DampError(f"class {name!r} is a name, but the model has no class names: give --labels FILE "
                        "(one name per line) or use class indices")
    if name in names:
        return list(names).index(name)
    folded = [i for i, n in enumerate(names) if n.casefold() == name.casefold()]
    if len(folded) == 1:
        return folded[0]
    shown = ", ".join(repr(n) for n in names[:12]) + (", ..." if len(names) > 12 else "")
    raise DampError(f"unknown class name {name!r}; known names: {shown}")
