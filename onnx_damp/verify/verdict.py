"""The verdict: was the class forgotten? One line a user reads first, with the numbers behind it.

FORGOTTEN when the forget-class accuracy is at most the target (default 1%, the tool's own
--target-forget-acc). The retain side is reported with signs that read one way everywhere: a change is
edited minus original accuracy, in points, so a loss is negative.
"""
from __future__ import annotations

from dataclasses import dataclass

from onnx_damp.verify.metrics import AccuracySummary, worst_retain_drop


def _pts(change: float) -> str:
    """A signed change in points; -0.00 reads as +0.00."""
    v = 100 * change
    return f"{0.0 if abs(v) < 0.005 else v:+.2f} pts"


@dataclass
class Verdict:
    forgotten: bool
    forget_accuracy: float
    target: float
    retain_change: float | None          # mean retain accuracy, edited - original (fraction; < 0 is a loss)
    worst_class: int | None
    worst_change: float | None           # that class's change (fraction; < 0 is a loss)
    validated_on: str

    def to_dict(self) -> dict:
        return {"forgotten": self.forgotten, "forget_accuracy": self.forget_accuracy, "target": self.target,
                "retain_change": self.retain_change, "worst_retain_class": self.worst_class,
                "worst_retain_change": self.worst_change, "validated_on": self.validated_on}

    @classmethod
    def from_dict(cls, d: dict) -> "Verdict":
        """The inverse of to_dict (the HTML page renders the JSON's verdict with line())."""
        return cls(bool(d["forgotten"]), d["forget_accuracy"], d["target"], d.get("retain_change"),
                   d.get("worst_retain_class"), d.get("worst_retain_change"), d.get("validated_on", ""))

    def line(self, names: "list[str] | None" = None) -> str:
        word = "FORGOTTEN" if self.forgotten else "NOT FORGOTTEN"
        rel = "<=" if self.forgotten else ">"
        out = f"{word}: forget accuracy {100 * self.forget_accuracy:.2f}% ({rel} target {100 * self.target:g}%)"
        if self.retain_change is not None:
            out += f"; retain accuracy {_pts(self.retain_change)}"
        if self.worst_class is not None:
            name = names[self.worst_class] if names and self.worst_class < len(names) else str(self.worst_class)
            out += f"; worst retain class {name} {_pts(self.worst_change)}"
        return out + f"; on the {self.validated_on}"


def verdict(after: AccuracySummary, before: AccuracySummary | None, target: float, validated_on: str) -> Verdict:
    """The verdict of an edited model's accuracies (after) against the original's (before, when known)."""
    change = worst = worst_change = None
    if before is not None:
        change = after.retain_accuracy - before.retain_accuracy
        worst, drop = worst_retain_drop(before, after)
        worst_change = -drop if worst is not None else None
    return Verdict(after.forget_accuracy <= target + 1e-12, after.forget_accuracy, target, change, worst,
                   worst_change, validated_on)
