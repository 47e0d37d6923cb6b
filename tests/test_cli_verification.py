"""Verification metrics and pipeline gates through the command line, on the shipped MNIST sample (forget 3)."""
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper


from mnist_sample import CALIB, MODEL, REF, invoke, small_files


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return small_files(tmp_path_factory.mktemp("verify"), 150, 60)


@pytest.fixture(scope="module")
def damp(files):
    """DAMP forget 3 with every gate on: the run, the edited model and the report."""
    out, rep = files["folder"] / "damp3.onnx", files["folder"] / "report.json"
    r = invoke("forget", MODEL, "--data", CALIB, "--forget", 3, "-o", out, "--eval-data", files["test"],
               "--reference", REF, "--report", rep, "-q", "-v", "--feature-samples", 150,
               "--max-forget-acc", 0.01, "--max-retain-drop", 0.01, "--min-cka-gain", 0.0, "--max-mia", 0.05)
    return r, out, json.loads(rep.read_text()) if rep.exists() else None


@pytest.fixture(scope="module")
def head_suppressed(files):
    """The original with a large constant subtracted from class 3's bias in the final Gemm."""
    m = onnx.load(str(MODEL))
    gemm = [n for n in m.graph.node if n.op_type == "Gemm"][-1]
    for t in m.graph.initializer:
        if t.name == gemm.input[2]:
            b = numpy_helper.to_array(t).copy()
            b[3] -= 100.0
            t.CopyFrom(numpy_helper.from_array(b, t.name))
    path = files["folder"] / "head3.onnx"
    onnx.save(m, str(path))
    return path


def evaluate_json(model, files, *extra):
    r = invoke("evaluate", model, "--data", files["test"], "--forget", 3, "--original", MODEL, "--reference", REF,
               "--train-data", files["calib"], "--feature-samples", 150, "--json", "-q", *extra)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_forget_reports_verification_and_passes_gates(damp):
    r, out, report = damp
    assert r.exit_code == 0, r.output
    assert "Verification" in r.output and "Per-layer verification" in r.output and "gate failed" not in r.output
    js = report["reference_js"]["model"]["forget"]
    assert "Outputs against the reference" in r.output and f"{js:.4f}" in r.output  # JS in the terminal too
    assert out.exists()
    v = report["verification"]
    assert set(v) == {"selectivity", "mia", "feature_samples", "layer_matching", "layers", "cka_gain", "bias_shift",
                      "notes"}
    assert report["gates"]["passed"] is True
    assert [c["gate"] for c in report["gates"]["checks"]] == ["max_forget_acc", "max_retain_drop", "max_class_drop",
                                                            "min_cka_gain", "max_mia"]
    assert v["mia"]["available"] and v["mia"]["model"]["confidence"]["targets"] == 3000 // 10  # calibration 3s
    assert v["selectivity"]["selectivity"] > 0.95
    assert report["reference_js"]["model"]["forget"] < report["reference_js"]["original"]["forget"]
    assert v["cka_gain"]["value"] > 0 and v["cka_gain"]["layers"] == [7, 8, 9]
    # the representation edit leaves biases alone; the readout stage's bias shift is the whole bias part
    ro = report["readout"]
    assert v["bias_shift"]["available"] and ro["applied"]
    assert v["bias_shift"]["bias"] == pytest.approx(ro["shift"][0], rel=1e-5)
    assert v["bias_shift"]["features"] < 0 and 0 < v["bias_shift"]["bias_share"] < 1  # features carry a part


def metrics_section(heading: str) -> str:
    """The text of docs/metrics.md under `## heading`, up to the next heading of that level."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "metrics.md").read_text()
    return text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]


def table_keys(body: str) -> set[str]:
    """Backticked names in the first column of the tables in body (top-level part of dotted names)."""
    keys = set()
    for line in body.splitlines():
        if line.startswith("| `"):
            keys |= {k.split(".")[0] for k in re.findall(r"`([a-z0-9_.]+)`", line.split("|")[1])}
    return keys


def test_json_keys_are_documented(damp, files):
    """Every top-level key forget and evaluate emit is defined in docs/metrics.md (stable, documented keys)."""
    body = metrics_section("Top-level JSON keys")
    assert set(damp[2]) - table_keys(body) == set()
    evaluate_keys = set(evaluate_json(damp[1], files))
    assert {k for k in evaluate_keys if f"`{k}`" not in body} == set()
    assert set(damp[2]["after"]) <= set(re.findall(r"`([a-z_]+)`", body.split("| `before`, `after` |")[1].split("\n")[0]))


def test_evaluate_damp_model_against_original_and_retrained(damp, files):
    d = evaluate_json(damp[1], files)
    v = d["verification"]
    deepest = v["layers"][-1]
    assert deepest["node"] == "node_linear" and deepest["cka_gain"] > 0.05
    assert v["cka_gain"]["value"] > 0
    assert deepest["forget_distance"]["ratio"] < 1.0              # less forget structure at the head input
    assert v["mia"]["model"]["confidence"]["member_rate"] <= 0.05
    assert v["mia"]["original"]["confidence"]["member_rate"] >= 0.5
    assert v["mia"]["reference"]["confidence"]["member_rate"] <= 0.05
    b = v["bias_shift"]
    assert b["delta_logit"] < 0 and 0 < b["bias_share"] < 1  # the readout's bias and the features both carry a part
    assert b["bias"] + b["head_weight"] + b["features"] == pytest.approx(b["delta_logit"], rel=1e-3)


def test_head_bias_suppression_is_all_bias_and_leaves_features_alone(head_suppressed, files):
    d = evaluate_json(head_suppressed, files)
    v = d["verification"]
    assert d["model"]["forget_accuracy"] == 0.0
    assert v["bias_shift"]["bias_share"] == pytest.approx(1.0, abs=1e-4)
    assert v["bias_shift"]["delta_logit"] == pytest.approx(-100.0, rel=1e-4)
    for layer in v["layers"]:
        assert layer["cka_to_reference"]["model"] == pytest.approx(layer["cka_to_reference"]["original"], abs=1e-9)
        assert layer["forget_distance"]["ratio"] == pytest.approx(1.0, abs=1e-6)
    assert v["cka_gain"]["value"] == pytest.approx(0.0, abs=1e-9)
    # the same model fails a CKA-gain gate that the DAMP model passes
    r = invoke("evaluate", head_suppressed, "--data", files["test"], "--forget", 3, "--original", MODEL,
               "--reference", REF, "-q", "--feature-samples", 100, "--min-cka-gain", 0.01)
    assert r.exit_code == 3 and "--min-cka-gain fails" in r.stderr


def test_failed_gate_exits_3_with_one_line_on_stderr(files):
    r = invoke("evaluate", MODEL, "--data", files["test"], "--forget", 3, "--original", MODEL, "--json", "-q",
               "--feature-samples", 0, "--max-forget-acc", 0.01, "--max-retain-drop", 0.01)
    assert r.exit_code == 3, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gate failed: --max-forget-acc fails")
    assert "--max-retain-drop" not in lines[0]                     # that one holds
    d = json.loads(r.stdout)
    assert d["gates"]["passed"] is False
    assert [(c["gate"], c["passed"]) for c in d["gates"]["checks"]] == [("max_forget_acc", False),
                                                                      ("max_retain_drop", True),
                                                                      ("max_class_drop", True)]
    ok = invoke("evaluate", MODEL, "--data", files["test"], "--forget", 3, "-q", "--feature-samples", 0,
                "--max-forget-acc", "100%")
    assert ok.exit_code == 0 and "--max-forget-acc holds" in ok.output


def test_forget_with_failing_gate_still_writes_the_model(files):
    out = files["folder"] / "gated.onnx"
    r = invoke("forget", MODEL, "--data", files["calib"], "--forget", 3, "-o", out, "-q", "--max-passes", 1,
               "--feature-samples", 0, "--max-forget-acc", -1)
    assert r.exit_code == 3 and out.exists()
    assert r.stderr.strip().splitlines() == [line for line in r.stderr.strip().splitlines()
                                             if line.startswith("gate failed:")]


@pytest.mark.parametrize("args,fragment", [
    (["evaluate", "--max-retain-drop", 0.01], "--max-retain-drop needs --original"),
    (["evaluate", "--original", MODEL, "--min-cka-gain", 0.0], "--min-cka-gain needs --reference"),
    (["evaluate", "--max-mia", 0.1], "--max-mia needs --train-data"),
    (["evaluate", "--feature-samples", -1], "--feature-samples"),
    (["forget", "--max-mia", 0.1], "--max-mia needs --eval-data"),
    (["forget", "--reference", REF, "--feature-samples", 0, "--min-cka-gain", 0.0], "--feature-samples above 0"),
])
def test_gate_without_its_inputs_is_bad_input(files, tmp_path, args, fragment):
    cmd, *rest = args
    base = ["evaluate", MODEL, "--data", files["test"]] if cmd == "evaluate" else \
        ["forget", MODEL, "--data", files["calib"], "-o", tmp_path / "o.onnx"]
    r = invoke(*base, "--forget", 3, "-q", *rest)
    assert r.exit_code == 2, r.output
    assert r.stderr.strip().startswith("error:") and fragment in r.stderr and "Traceback" not in r.output
    assert not (tmp_path / "o.onnx").exists()


def test_train_data_that_does_not_fit_is_bad_input(files, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((20, 1, 14, 14), np.float32), y=np.arange(20) % 10)
    r = invoke("evaluate", MODEL, "--data", files["test"], "--forget", 3, "--train-data", bad, "-q")
    assert r.exit_code == 2 and "expects" in r.stderr
