"""The verdict line, gates written as 1% or 0.01, --forget 3,5, and Ctrl-C (issue 15)."""
import json

import numpy as np

import pytest

from mnist_sample import CALIB, MODEL, invoke, subset
from onnx_damp.verify.metrics import AccuracySummary
from onnx_damp.verify.verdict import verdict


def summary(per_class, forget):
    retain = [c for c in per_class if c not in forget]
    return AccuracySummary(per_class, forget, sum(per_class[c] for c in forget) / len(forget),
                           sum(per_class[c] for c in retain) / len(retain), None, None, 100)


def test_verdict_reads_one_way():
    before = summary({0: 0.9, 1: 0.8, 2: 0.7}, [0])
    after = summary({0: 0.0, 1: 0.82, 2: 0.65}, [0])
    v = verdict(after, before, 0.01, "evaluation data")
    assert v.forgotten and v.worst_class == 2 and v.worst_change == pytest.approx(-0.05)
    line = v.line(["cat", "dog", "bird"])
    assert line.startswith("FORGOTTEN: forget accuracy 0.00% (<= target 1%)")
    assert "retain accuracy -1.50 pts" in line and "worst retain class bird -5.00 pts" in line
    not_yet = verdict(summary({0: 0.02, 1: 0.8, 2: 0.7}, [0]), before, 0.01, "evaluation data")
    assert not not_yet.forgotten and not_yet.line().startswith("NOT FORGOTTEN: forget accuracy 2.00% (> target 1%)")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return subset(CALIB, 30, tmp_path_factory.mktemp("v") / "calib.npz")


def test_forget_ends_with_the_verdict_and_takes_percent_gates(small, tmp_path):
    r = invoke("forget", MODEL, "--data", small, "--forget", "3,5", "-o", tmp_path / "e.onnx", "-q",
               "--feature-samples", 0, "--max-forget-acc", "1%", "--json")
    assert r.exit_code in (0, 3), r.output
    payload = json.loads(r.output)
    assert payload["forget_classes"] == [3, 5] and payload["verdict"]["target"] == pytest.approx(0.01)
    assert payload["verdict"]["forgotten"] == (payload["after"]["forget_accuracy"] <= 0.01)
    r = invoke("forget", MODEL, "--data", small, "--forget", "3", "-o", tmp_path / "e.onnx", "-q", "--feature-samples", 0)
    assert r.stdout.strip().splitlines()[-1].split(":")[0] in ("FORGOTTEN", "NOT FORGOTTEN")


def test_the_tools_targets_are_default_gates(small, tmp_path):
    """Without --max-* the tool's own targets gate the run (exit 3 when missed); --no-gates turns them off."""
    args = ("forget", MODEL, "--data", small, "--forget", "3", "-o", tmp_path / "e.onnx", "-q", "--feature-samples", 0,
            "--no-readout", "--holdout", 0, "--no-extra-directions", "--target-forget-acc", 0.0, "--json")
    r = invoke(*args)
    payload = json.loads(r.stdout)
    checks = {c["gate"]: c for c in payload["gates"]["checks"]}
    assert set(checks) == {"max_forget_acc", "max_retain_drop", "max_class_drop"}
    assert all(c["default"] for c in checks.values())
    assert checks["max_forget_acc"]["threshold"] == 0.0 and checks["max_class_drop"]["threshold"] == pytest.approx(0.03)
    assert r.exit_code == (0 if payload["gates"]["passed"] else 3)
    if not payload["gates"]["passed"]:
        assert "the tool's own targets; --no-gates turns them off" in r.stderr
    off = invoke(*args, "--no-gates")
    assert off.exit_code == 0 and json.loads(off.stdout)["gates"]["checks"] == []
    given = invoke(*args, "--no-gates", "--max-class-drop", "100%")
    assert [(c["gate"], c["default"]) for c in json.loads(given.stdout)["gates"]["checks"]] == [("max_class_drop", False)]


@pytest.mark.parametrize("value,ok", [("1%", True), ("0.01", True), ("1", False), ("5", False), ("x", False)])
def test_gate_values_are_fractions_or_percentages(value, ok, small, tmp_path):
    r = invoke("forget", MODEL, "--data", small, "--forget", 3, "-o", tmp_path / "e.onnx", "-q",
               "--feature-samples", 0, "--max-retain-drop", value)
    if ok:
        assert r.exit_code in (0, 3), r.output
    else:
        assert r.exit_code == 2 and "--max-retain-drop" in r.output and "write" in r.output


def test_ctrl_c_exits_130_with_one_line(capsys):
    from onnx_damp.cli import _user_errors

    @_user_errors
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exc:
        interrupted()
    assert exc.value.code == 130 and "interrupted" in capsys.readouterr().err


def test_tables_say_which_way_is_good():
    from onnx_damp.report.tables import before_after_table
    from onnx_damp.verify.measures import GateResult

    before = summary({0: 0.9, 1: 0.8, 2: 0.7}, [0])
    after = summary({0: 0.0, 1: 0.82, 2: 0.65}, [0])
    plain = before_after_table(before, after, "evaluation data", ["cat", "dog", "bird"])
    assert plain.splitlines()[1].split() == ["metric", "before", "after", "goal"]
    assert "lower is better" in plain and "class 2 (bird): -5.00 pts" in plain
    gated = before_after_table(before, after, "evaluation data", None,
                               [GateResult("max_forget_acc", "forget_accuracy", 0.0, 0.02, True),
                                GateResult("max_class_drop", "worst_retain_drop", 0.05, 0.03, False)])
    assert "at most 2%" in gated and "no class below -3 pts" in gated and "lower is better" not in gated



def test_progress_in_a_log_is_one_line_per_phase(small, capsys):
    """Not a terminal: one 'phase: done/total in Ts' line per phase, done == total, in pipeline order."""
    import re

    import onnx_damp

    capsys.readouterr()
    onnx_damp.forget(MODEL, small, [3], eval_data=small, feature_samples=20, quiet=False)
    lines = capsys.readouterr().err.strip().splitlines()
    counts = [re.fullmatch(r"([a-z ,\d-]+): (\d+)/(\d+) in [\d.]+s", line) for line in lines]
    assert all(counts), lines
    phases = [m.group(1) for m in counts]
    assert phases[:3] == ["statistics", "planning", "held-out check"] and phases[-2:] == ["validation", "verification"]
    assert all(m.group(2) == m.group(3) for m in counts), lines
    assert int(counts[0].group(3)) == len(np.load(small)["y"]) * 4 // 5   # statistics: the fit part only


def test_without_eval_data_it_validates_on_the_held_out_images_only(small, capsys):
    """Issue 14/15: no --eval-data: the verdict and gates read the held-out calibration images (which built
    nothing), from outputs the held-out check already has; no extra pass over the calibration data and no
    per-layer features (they need test images), unless asked for."""
    import onnx_damp
    from onnx_damp.method.selection import split_holdout

    y = np.load(small)["y"]
    capsys.readouterr()
    res = onnx_damp.forget(MODEL, small, [3], quiet=False)
    phases = [line.split(":")[0] for line in capsys.readouterr().err.splitlines()]
    assert res.validated_on.startswith("held-out calibration images")
    assert res.before.samples == len(split_holdout(y)[1]) < len(y)
    assert "calibration outputs" not in phases and "verification" not in phases, phases
    assert res.verification.layers == [] and res.verification.mia_reason
    asked = onnx_damp.forget(MODEL, small, [3], feature_samples=20)
    assert asked.verification.layers                   # asked for: computed on the held-out images
