"""Image preprocessing the model was trained with: resize, centre crop, colour mode, scale, mean/std, layout.

Pure: numpy only at import time; Pillow is imported when an image is actually resized or decoded
(extra `onnx-damp[images]`). The same steps apply to decoded images (imagefolder.py) and to the 8-bit
arrays of the torchvision on-disk formats (formats.py), in this order, as torchvision's usual
`Resize(n), CenterCrop(m), ToTensor(), Normalize(mean, std)` does:

1. colour mode: "RGB" (3 channels) or "L" (1 channel, ITU-R 601-2 luma as Pillow computes it);
   None = as the data are stored (for an image folder: as the first image is);
2. resize: the shorter side to `resize` pixels, bilinear (Pillow), the longer side int(resize * long / short);
3. center_crop: [h, w] from the middle (top = round((H - h) / 2), as torchvision);
4. float: divided by 255 when `scale`, then (x - mean[c]) / std[c] per channel;
5. layout: "NCHW" (channels first) or "NHWC"; dtype (default float32).

Files: JSON (or TOML on Python 3.11+) with exactly these keys; an unknown key is a one-line error.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from onnx_damp.errors import DampError

MODES = ("RGB", "L")
LAYOUTS = ("NCHW", "NHWC")
PILLOW_HINT = "reading images needs Pillow: pip install 'onnx-damp[images]'"


def require_pil():
    """Import Pillow's Image module or fail with a one-line hint."""
    try:
        from PIL import Image
    except ImportError:
        raise DampError(PILLOW_HINT) from None
    return Image


@dataclass(frozen=True)
class Preprocess:
    resize: int | None = None
    center_crop: tuple[int, int] | None = None
    mode: str | None = None
    scale: bool = True
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    layout: str = "NCHW"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        if self.resize is not None:
            set_("resize", _positive_int(self.resize, "resize"))
        if self.center_crop is not None:
            set_("center_crop", parse_crop(self.center_crop))
        if self.mode is not None:
            mode = str(self.mode).upper()
            if mode not in MODES:
                raise DampError(f"preprocessing mode must be one of {', '.join(MODES)}, got {self.mode!r}")
            set_("mode", mode)
        layout = str(self.layout).upper()
        if layout not in LAYOUTS:
            raise DampError(f"preprocessing layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        set_("layout", layout)
        if not isinstance(self.scale, bool):
            raise DampError(f"preprocessing scale must be true or false, got {self.scale!r}")
        for key in ("mean", "std"):
            v = getattr(self, key)
            if v is not None:
                set_(key, _floats(v, key))
        if self.std is not None and any(s == 0 for s in self.std):
            raise DampError("preprocessing std must not contain 0")
        try:
            dt = np.dtype(self.dtype)
        except TypeError:
            raise DampError(f"preprocessing dtype {self.dtype!r} is not a numpy dtype") from None
        if not (np.issubdtype(dt, np.floating) or np.issubdtype(dt, np.integer)):
            raise DampError(f"preprocessing dtype must be numeric, got {self.dtype!r}")
        set_("dtype", dt.name)

    # ------------------------------------------------------------------------------------- files
    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("center_crop", "mean", "std"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "preprocessing") -> "Preprocess":
        if not isinstance(d, dict):
            raise DampError(f"{source}: expected a table of preprocessing settings")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise DampError(f"{source}: unknown preprocessing key(s) {unknown}; known: {', '.join(known)}")
        return cls(**d)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Preprocess":
        """Read a .json (or, on Python 3.11+, .toml) preprocessing file."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DampError(f"cannot read preprocessing file {p}: {exc}") from None
        if p.suffix.lower() == ".toml":
            try:
                import tomllib
            except ImportError:
                raise DampError(f"{p}: TOML needs Python 3.11+; write the settings as JSON instead") from None
            try:
                d = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise DampError(f"{p} is not valid TOML: {exc}") from None
            d = d.get("preprocess", d) if isinstance(d.get("preprocess"), dict) and len(d) == 1 else d
        else:
            try:
                d = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DampError(f"{p} is not valid JSON: {exc}") from None
        return cls.from_dict(d, str(p))

    def save(self, path: str | os.PathLike) -> None:
        p = Path(path)
        if p.suffix.lower() == ".toml":
            lines = [f"{k} = {json.dumps(v)}" for k, v in self.to_dict().items() if v is not None]
            p.write_text("\n".join(lines) + "\n", encoding="utf-8")
        else:
            p.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    def updated(self, **overrides: Any) -> "Preprocess":
        """A copy with the overrides that are not None (command-line options over a file)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    # ------------------------------------------------------------------------------------ shapes
    def resolved_mode(self, stored_channels: int) -> str:
        return self.mode or ("L" if stored_channels == 1 else "RGB")

    def output_hw(self, hw: tuple[int, int]) -> tuple[int, int]:
        """Height and width of the result for an image of height/width hw."""
        h, w = hw
        if self.resize is not None:
            h, w = resized_hw(h, w, self.resize)
        if self.center_crop is not None:
            h, w = self.center_crop
        return h, w

    def sample_shape(self, hw: tuple[int, int], stored_channels: int) -> tuple[int, int, int]:
        """The shape of one preprocessed sample (no batch axis) for an image of size hw."""
        c = 1 if self.resolved_mode(stored_channels) == "L" else 3
        h, w = self.output_hw(hw)
        return (c, h, w) if self.layout == "NCHW" else (h, w, c)

    # --------------------------------------------------------------------------------- applying
    def apply_image(self, img) -> np.ndarray:
        """A PIL image -> one preprocessed sample (numpy array in the layout and dtype asked for)."""
        Image = require_pil()
        stored = 1 if img.mode in ("1", "L", "LA", "I", "I;16", "F") else 3
        mode = self.resolved_mode(stored)
        if img.mode != mode:
            if mode == "L" and img.mode in ("I", "I;16", "F"):
                raise DampError(f"{img.mode}-mode (16-bit or float) images are not supported; save them as 8-bit")
            img = img.convert(mode)
        if self.resize is not None:
            h, w = resized_hw(img.height, img.width, self.resize)
            if (h, w) != (img.height, img.width):
                img = img.resize((w, h), Image.BILINEAR)
        a = np.asarray(img, dtype=np.uint8)
        return self.finish(a.reshape(a.shape[0], a.shape[1], -1)[None])[0]

    def apply_array(self, a: np.ndarray) -> np.ndarray:
        """8-bit images [N, H, W] or [N, H, W, C] (C = 1 or 3) -> preprocessed samples."""
        a = np.asarray(a)
        if a.ndim == 3:
            a = a[..., None]
        if a.ndim != 4 or a.shape[-1] not in (1, 3):
            raise DampError(f"images must be [N, H, W] or [N, H, W, 1|3], got {list(a.shape)}")
        mode = self.resolved_mode(a.shape[-1])
        if mode == "L" and a.shape[-1] == 3:
            a = rgb_to_l(a)
        elif mode == "RGB" and a.shape[-1] == 1:
            a = np.repeat(a, 3, axis=-1)
        if self.resize is not None and resized_hw(a.shape[1], a.shape[2], self.resize) != a.shape[1:3]:
            Image = require_pil()
            h, w = resized_hw(a.shape[1], a.shape[2], self.resize)
            pil_mode = "L" if a.shape[-1] == 1 else "RGB"
            a = np.stack([np.asarray(Image.fromarray(im[..., 0] if pil_mode == "L" else im, pil_mode)
                                     .resize((w, h), Image.BILINEAR)).reshape(h, w, -1) for im in a])
        return self.finish(a)

    def finish(self, a: np.ndarray) -> np.ndarray:
        """Centre crop, scale, normalise and lay out a batch of 8-bit HWC images [N, H, W, C]."""
        if self.center_crop is not None:
            a = center_crop(a, self.center_crop)
        x = a.astype(np.float32)
        if self.scale:
            x /= np.float32(255.0)
        c = x.shape[-1]
        if self.mean is not None:
            x -= _per_channel(self.mean, c, "mean")
        if self.std is not None:
            x /= _per_channel(self.std, c, "std")
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x.astype(self.dtype, copy=False))


# ------------------------------------------------------------------------------------------- helpers
def resized_hw(h: int, w: int, size: int) -> tuple[int, int]:
    """Shorter side to size, the other int(size * long / short) (torchvision's Resize(int))."""
    if h <= w:
        return size, int(size * w / h)
    return int(size * h / w), size


def center_crop(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """The middle [h, w] of images [N, H, W, C]; a crop larger than the image is an error."""
    ch, cw = hw
    H, W = a.shape[1], a.shape[2]
    if ch > H or cw > W:
        raise DampError(f"--center-crop {ch}x{cw} is larger than the {H}x{W} image: add --resize {max(ch, cw)}")
    top, left = int(round((H - ch) / 2.0)), int(round((W - cw) / 2.0))
    return a[:, top:top + ch, left:left + cw]


def rgb_to_l(a: np.ndarray) -> np.ndarray:
    """Pillow's RGB -> L conversion (L = R 299/1000 + G 587/1000 + B 114/1000, rounded) on [..., 3] uint8."""
    a = a.astype(np.uint32)
    luma = (a[..., 0] * 19595 + a[..., 1] * 38470 + a[..., 2] * 7471 + 0x8000) >> 16
    return luma.astype(np.uint8)[..., None]


def parse_crop(v) -> tuple[int, int]:
    """28, "28", "28x32", "28,32", [28, 32] -> (h, w)."""
    if isinstance(v, str):
        parts = [p for p in v.lower().replace("x", ",").split(",") if p.strip()]
        try:
            v = [int(p) for p in parts]
        except ValueError:
            raise DampError(f"center crop must be N or HxW, got {v!r}") from None
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        v = [int(v)]
    if not isinstance(v, (list, tuple)) or len(v) not in (1, 2):
        raise DampError(f"center crop must be N or [h, w], got {v!r}")
    hw = [_positive_int(x, "center_crop") for x in v]
    return (hw[0], hw[-1])


def _positive_int(v, key: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise DampError(f"preprocessing {key} must be a positive integer, got {v!r}")
    return int(v)


def _floats(v, key: str) -> tuple[float, ...]:
    if isinstance(v, str):
        v = [p for p in v.split(",") if p.strip()]
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = [v]
    try:
        out = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        raise DampError(f"preprocessing {key} must be a number or a list of numbers, got {v!r}") from None
    if not out or not all(np.isfinite(out)):
        raise DampError(f"preprocessing {key} must be finite numbers, got {v!r}")
    return out


def _per_channel(v: tuple[float, ...], channels: int, key: str) -> np.ndarray:
    if len(v) not in (1, channels):
        raise DampError(f"preprocessing {key} has {len(v)} values but the images have {channels} channel(s)")
    return np.asarray(v if len(v) == channels else v * channels, dtype=np.float32)


# ------------------------------------------------------------------------------------- the fits check
def _fmt(dims: Sequence) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) and d > 0 else "?" for d in dims) + "]"


def check_fits(pre: Preprocess, model_input_shape: Sequence, hw: tuple[int, int], stored_channels: int,
               source: str = "the data", input_name: str = "input") -> tuple[int, ...]:
    """Before any work: the sample shape the preprocessing gives for images of size hw, checked against the
    model input (with its batch axis); a mismatch is a DampError that says which options to change."""
    got = pre.sample_shape(hw, stored_channels)
    mode = pre.resolved_mode(stored_channels)
    for key in ("mean", "std"):
        v = getattr(pre, key)
        c = 1 if mode == "L" else 3
        if v is not None and len(v) not in (1, c):
            raise DampError(f"{source}: --{key} has {len(v)} values but --mode {mode} gives {c} channel(s)")
    want = list(model_input_shape)[1:]
    known = lambda d: isinstance(d, int) and d > 0  # noqa: E731
    if len(want) != 3:
        raise DampError(f"{source}: model input {input_name!r} expects {_fmt(model_input_shape)} (rank "
                        f"{len(model_input_shape)}), but images give [N, C, H, W] or [N, H, W, C]")
    if all(not known(w) or w == g for w, g in zip(want, got)):
        return got
    layout = pre.layout
    other = "NHWC" if layout == "NCHW" else "NCHW"
    ch_axis = 0 if layout == "NCHW" else 2
    fixes = []
    # does the model look like the other layout (channels 1 or 3 where this layout puts them)?
    if not (known(want[ch_axis]) and want[ch_axis] in (1, 3)):
        o_axis = 2 if layout == "NCHW" else 0
        if known(want[o_axis]) and want[o_axis] in (1, 3):
            layout, ch_axis = other, o_axis
            fixes.append(f"--layout {other}")
    hw_axes = (1, 2) if layout == "NCHW" else (0, 1)
    wc = want[ch_axis]
    wh, ww = (want[hw_axes[0]], want[hw_axes[1]])
    if known(wc) and wc != (1 if mode == "L" else 3):
        fixes.append("--mode L" if wc == 1 else "--mode RGB" if wc == 3 else f"a model input with 1 or 3 "
                     f"channels (it has {wc})")
    h, w = pre.output_hw(hw)
    if (known(wh) and wh != h) or (known(ww) and ww != w):
        th, tw = (wh if known(wh) else h), (ww if known(ww) else w)
        crop = str(th) if th == tw else f"{th}x{tw}"
        rh, rw = resized_hw(hw[0], hw[1], pre.resize) if pre.resize else hw
        if min(rh, rw) < max(th, tw) or (pre.resize is None and max(hw) > 2 * max(th, tw)):
            fixes.append(f"--resize {max(th, tw)}")
        fixes.append(f"--center-crop {crop}")
    desc = (f"{layout}, {wc} channel{'s' if wc != 1 else ''}" if known(wc) else layout)
    ask = " and ".join(fixes) if fixes else "a preprocessing that gives that shape"
    raise DampError(f"{source}: model input {input_name!r} expects {_fmt(want)} ({desc}) but the preprocessing "
                    f"gives {list(got)} from {hw[0]}x{hw[1]} images: use {ask}")


def as_preprocess(preprocess) -> "Preprocess":
    """A Preprocess from None (defaults), a Preprocess, a dict of its fields or a .json/.toml path."""
    if preprocess is None:
        return Preprocess()
    if isinstance(preprocess, Preprocess):
        return preprocess
    if isinstance(preprocess, dict):
        return Preprocess.from_dict(preprocess)
    return Preprocess.load(preprocess)
