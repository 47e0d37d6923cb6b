"""The --html report: self-contained page with one embedded PNG per plot, built from the shipped MNIST sample."""
import base64
import hashlib
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from onnx_damp.verify.metrics import forget_confusion

from mnist_sample import MODEL, REF, invoke, small_files

PNG_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return small_files(tmp_path_factory.mktemp("html"), 100, 100)


@pytest.fixture(scope="module")
def forget_run(files):
    """forget 3 with a reference and a gate, writing the edited model, the JSON report and the HTML report."""
    pytest.importorskip("matplotlib")
    d = files["folder"]
    out, rep, page = d / "damp3.onnx", d / "report.json", d / "forget.html"
    r = invoke("forget", MODEL, "--data", files["calib"], "--forget", 3, "-o", out, "--eval-data", files["test"],
               "--reference", REF, "--report", rep, "--html", page, "-q", "--feature-samples", 100,
               "--max-forget-acc", 0.5)
    return r, out, json.loads(rep.read_text()) if rep.exists() else None, page


@pytest.fixture(scope="module")
def evaluate_run(forget_run, files):
    """evaluate the edited model against the original, without a reference (no CKA plot), with a failing gate."""
    page = files["folder"] / "evaluate.html"
    r = invoke("evaluate", forget_run[1], "--data", files["test"], "--forget", 3, "--original", MODEL,
               "--feature-samples", 100, "--html", page, "-q", "--max-retain-drop", -1)
    return r, page


def images(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in PNG_URI.findall(text)]


def assert_self_contained(text: str) -> None:
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert not re.search(r'(src|href)\s*=\s*["\']?\s*(https?:)?//', text, re.I), "page loads something remote"
    assert "<script" not in text.lower() and "<link" not in text.lower() and "@import" not in text


def test_forget_html_is_self_contained_with_one_png_per_plot(forget_run):
    r, out, report, page = forget_run
    assert r.exit_code == 0, r.output
    assert out.exists() and page.exists()
    text = page.read_text(encoding="utf-8")
    assert_self_contained(text)
    pngs = images(text)
    assert len(pngs) == 4 == text.count("<img")     # accuracy, alpha/separability, CKA, forget confusion
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") and len(p) > 5000 for p in pngs)
    assert "DAMP forget: class 3" in text and "not available" not in text
    assert text.count("<table") >= 5              # accuracy, gates, verification, confusion, per layer, per class
    for fragment in ("forget accuracy", "retain accuracy", "selectivity", "MIA forget member rate", "CKA gain",
                     "bias-shift share", "--max-forget-acc", "holds", "node_linear", "all gates hold"):
        assert fragment in text, fragment


def test_html_names_the_source_and_the_verdict_and_defines_each_metric(forget_run):
    """Issue 15: the verdict at the top, the source model and its hash, the reference beside the original and
    the edited model, and what each metric means where it appears."""
    from onnx_damp.report.glossary import GLOSSARY

    _, _, report, page = forget_run
    text = page.read_text(encoding="utf-8")
    head = text[text.index("<h1>"):text.index("<h2>")]
    word = "FORGOTTEN" if report["verdict"]["forgotten"] else "NOT FORGOTTEN"
    assert f'<div class="verdict {"pass" if word == "FORGOTTEN" else "fail"} big">{word}: forget accuracy' in head
    assert report["source_model"] == str(MODEL) and str(MODEL) in head
    assert report["source_sha256"][:16] in head
    accuracy = text[text.index("<h3>Accuracy</h3>"):text.index("<h3>Gates</h3>")]
    assert "<th>retrained reference</th>" in accuracy and "<th>what it means</th>" in accuracy
    assert f"{100 * report['reference']['retain_accuracy']:.2f}%" in accuracy
    for key in ("forget accuracy", "selectivity", "CKA gain", "bias-shift share", "layer sep.", "forget Delta"):
        assert GLOSSARY[key].split(";")[0].replace("'", "&#x27;") in text, key
    assert "<td>the tool's target</td>" in text and "<td>given</td>" in text   # the gates say where each threshold came from


def test_report_json_has_class_names_and_forget_confusion(forget_run):
    report = forget_run[2]
    assert report["class_names"] == [str(c) for c in range(10)]       # the sample's class_names metadata
    conf = report["forget_confusion"]
    assert set(conf) == {"model", "original", "reference"}
    assert all(len(conf[n]["3"]) == 10 and sum(conf[n]["3"]) == 100 for n in conf)
    assert conf["original"]["3"][3] == 100 - round(100 * (1 - report["before"]["per_class_accuracy"]["3"]))
    assert conf["model"]["3"][3] == round(100 * report["after"]["per_class_accuracy"]["3"])


def test_evaluate_html_without_reference_says_not_available(evaluate_run):
    r, page = evaluate_run
    assert r.exit_code == 3, r.output           # the gate fails, and the page is still written and says so
    text = page.read_text(encoding="utf-8")
    assert_self_contained(text)
    assert len(images(text)) == 2 == text.count("<img")   # accuracy and forget confusion; no alpha, no CKA
    assert text.count("not available") == 2
    assert "needs --reference" in text and "Evaluation: forgotten class 3" in text
    assert "retain agreement with original" in text and "<table" in text
    assert "gate failed: --max-retain-drop" in text and "fails" in text


def test_python_api_uses_class_names(forget_run, tmp_path):
    import onnx_damp

    report = dict(forget_run[2], class_names=["zero", "one", "two", "three", "four", "five", "six", "seven",
                                              "eight", "nine"])
    path = onnx_damp.write_html(report, tmp_path / "named.html")
    text = path.read_text(encoding="utf-8")
    assert "class 3 (three)" in text and "3 (three)" in text
    assert len(images(text)) == 4
    assert onnx_damp.render_html(report) == text      # pure: the same dict gives the same page


def test_missing_matplotlib_fails_before_any_work(files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)      # import matplotlib raises ImportError
    out, page = tmp_path / "out.onnx", tmp_path / "r.html"
    r = invoke("forget", MODEL, "--data", files["calib"], "--forget", 3, "-o", out, "--html", page, "-q")
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == ["error: --html needs matplotlib, an optional extra: "
                                             "pip install 'onnx-damp[report]'"]
    assert not out.exists() and not page.exists()
    r = invoke("evaluate", MODEL, "--data", files["test"], "--forget", 3, "--html", page, "-q")
    assert r.exit_code == 2 and "pip install 'onnx-damp[report]'" in r.stderr and not page.exists()


@pytest.mark.parametrize("which", ["model", "output", "data"])
def test_html_path_equal_to_an_input_or_output_is_refused(files, tmp_path, which):
    pytest.importorskip("matplotlib")
    model = tmp_path / "model.onnx"
    shutil.copy(MODEL, model)
    out = tmp_path / "out.onnx"
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    page = {"model": model, "output": out, "data": files["calib"]}[which]
    r = invoke("forget", model, "--data", files["calib"], "--forget", 3, "-o", out, "--html", page, "-q")
    assert r.exit_code == 2 and "--html" in r.stderr and "same file" in r.stderr, r.output
    assert hashlib.sha256(model.read_bytes()).hexdigest() == digest and not out.exists()
    if which == "model":
        r = invoke("evaluate", model, "--data", files["test"], "--forget", 3, "--html", model, "-q")
        assert r.exit_code == 2 and "same file" in r.stderr
        assert hashlib.sha256(model.read_bytes()).hexdigest() == digest


def test_forget_confusion_counts_predictions_of_forget_samples():
    y = np.array([0, 1, 1, 2, 2, 2])
    got = forget_confusion({"model": np.array([0, 0, 2, 2, 1, 0]), "original": y}, y, [1, 2], 4)
    assert got == {"model": {"1": [1, 0, 1, 0], "2": [1, 1, 1, 0]}, "original": {"1": [0, 2, 0, 0], "2": [0, 0, 3, 0]}}


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium (Debian: apt-get install chromium)")
def test_page_renders_in_headless_chromium(forget_run, tmp_path):
    page = forget_run[3]
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,3000", page.resolve().as_uri()],
                   capture_output=True, timeout=120, check=False)
    assert shot.exists() and shot.stat().st_size > 50_000
    from matplotlib.image import imread

    pixels = imread(str(shot))
    assert pixels.shape[:2] == (3000, 1200)
    assert pixels[..., :3].std() > 0.05        # not a blank page: tables, plots and text were drawn
