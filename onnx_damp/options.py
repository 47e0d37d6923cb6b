"""The options of a forget run as two dataclasses shared by the Python API and the CLI (whose defaults are
read from these fields, so they cannot drift): what the method does, and how the models are run.

Light on purpose (no numpy, no onnxruntime): `onnx-damp --help` imports it.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

from onnx_damp.errors import DampError

FEATURE_MODES = ("auto", "position", "pooled", "patch")
EXTRA_BARS = ("energy", "variance")


@dataclass(frozen=True)
class MethodOptions:
    """What the edit does (docs/method.md); every field is also a `forget` keyword."""

    feature_mode: str = "auto"          # how operator inputs become feature rows (CLI --features)
    extra_directions: bool = True       # forget-variance directions beyond the prototype residuals
    max_passes: int = 1                 # statistics passes; a further one is kept only when held-out images prefer it
    target_forget_accuracy: float = 0.01  # held-out forget accuracy the passes, readout and warnings aim at
    readout: bool = True                # the readout stage after the representation edit
    holdout: float = 0.2                # share of each class's calibration images held out of the statistics
    candidates: bool = True             # choose among candidate plans on the held-out images
    extra_bar: str = "energy"           # the bar extra directions must reach (an ablation; no CLI option)
    head_rows: bool = False             # the last operator's edit on the forget classes' rows only (an ablation that lost)
    layer_probe: bool = True            # each layer's whole-space separability (reported only, never sets alpha; a
    #                                     d x d factorisation per layer): the CLI skips it when nothing it prints shows it

    def check(self) -> "MethodOptions":
        """Raise DampError on a value the method cannot use; returns self."""
        if self.feature_mode not in FEATURE_MODES:
            raise DampError(f"feature mode must be one of {list(FEATURE_MODES)}, not {self.feature_mode!r}")
        if self.extra_bar not in EXTRA_BARS:
            raise DampError(f"extra_bar must be one of {list(EXTRA_BARS)}, not {self.extra_bar!r}")
        if self.max_passes < 1:
            raise DampError("max passes (max_passes, --max-passes) must be at least 1")
        if not 0.0 <= self.target_forget_accuracy <= 1.0:
            raise DampError("target forget accuracy (target_forget_accuracy, --target-forget-acc) must lie in [0, 1]")
        if not 0.0 <= self.holdout < 1.0:
            raise DampError("held-out share (holdout, --holdout) must lie in [0, 1)")
        return self


@dataclass(frozen=True)
class RunOptions:
    """How models are run; every field is also a `forget` / `collect` keyword."""

    batch_size: int = 128
    device: str = "cpu"                 # cpu or cuda
    input_name: str | None = None       # the model input the data feed (default: the only one)
    output_name: str | None = None      # the class-score output (default: the only one, or the first)
    quiet: bool = True                  # no progress bars
    ray: bool = False                   # collect statistics in Ray tasks
    ray_address: str | None = None

    def check(self) -> "RunOptions":
        if self.batch_size < 1:
            raise DampError("batch size (batch_size, --batch-size) must be at least 1")
        return self


def split_options(kwargs: dict) -> tuple[MethodOptions, RunOptions, dict]:
    """(MethodOptions, RunOptions, the rest) from keyword arguments named after their fields."""
    names = {cls: {f.name for f in fields(cls)} for cls in (MethodOptions, RunOptions)}
    picked = {cls: {k: v for k, v in kwargs.items() if k in n} for cls, n in names.items()}
    rest = {k: v for k, v in kwargs.items() if k not in names[MethodOptions] | names[RunOptions]}
    return (replace(MethodOptions(), **picked[MethodOptions]).check(),
            replace(RunOptions(), **picked[RunOptions]).check(), rest)
