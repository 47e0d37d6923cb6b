"""The command line: tables, JSON, and one-line errors with non-zero exit codes for bad input."""
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from mnist_sample import CALIB, MODEL, REF, TEST, invoke, subset
from tiny_models import no_weight_model


@pytest.fixture(scope="module")
def small_calib(tmp_path_factory):
    """A 60-per-class slice of the shipped calibration set keeps CLI tests quick."""
    return subset(CALIB, 60, tmp_path_factory.mktemp("data") / "calib_small.npz")


def assert_user_error(result, fragment: str):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0], result.output
    assert "Traceback" not in result.output


def test_help_lists_commands():
    r = invoke("--help")
    assert r.exit_code == 0 and all(c in r.output for c in ("inspect", "forget", "evaluate"))


@pytest.mark.parametrize("command", ["forget", "evaluate", "collect"])
def test_help_groups_options_in_sections(command):
    """Issue 15: --help in sections, every option in one of them (none left under 'Other' but --help's own)."""
    from onnx_damp.cli import HELP_SECTIONS

    text = invoke(command, "--help").output
    heads = [line[:-1] for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert heads[0] == "Input" and "Output" in heads and "Other" not in heads, heads
    assert heads == [h for h in HELP_SECTIONS if h in heads]                  # in the documented order
    if command == "forget":
        assert {"Method", "Validation and gates", "Runtime"} <= set(heads)


def test_collect_takes_data_fingerprint_and_its_old_name(tmp_path):
    with np.load(CALIB, allow_pickle=False) as z:
        x, y = z["x"][:40], z["y"][:40]
    np.savez(tmp_path / "s.npz", x=x, y=y)
    for flag in ("--data-fingerprint", "--preprocessing"):
        out = tmp_path / f"{flag.strip('-')}.npz"
        r = invoke("collect", MODEL, "--data", tmp_path / "s.npz", "-o", out, "-q", flag, "crop28")
        assert r.exit_code == 0, r.output
        from onnx_damp.stats.statistics import Statistics

        assert Statistics.load(out).provenance.preprocessing == "crop28"


def test_inspect_table_and_json():
    r = invoke("inspect", MODEL)
    assert r.exit_code == 0 and "10 editable operator(s)" in r.output and "Gemm" in r.output
    d = json.loads(invoke("inspect", MODEL, "--json").output)
    assert len(d["editable"]) == 10
    assert d["editable"][-1]["depth"] == 1.0 and d["editable"][0]["depth"] == 0.0
    assert {"node", "op_type", "weight", "weight_shape", "feature_dim", "depth_index", "shared"} <= set(d["editable"][0])


def test_forget_writes_model_report_and_metadata(tmp_path, small_calib):
    out, rep = tmp_path / "out.onnx", tmp_path / "report.json"
    r = invoke("forget", MODEL, "--data", small_calib, "--forget", 3, "-o", out, "--report", rep, "-q", "-v")
    assert r.exit_code == 0, r.output
    assert "Per-layer edit" in r.output and "forget accuracy" in r.output
    assert "held-out calibration images (no --eval-data given)" in r.output
    report = json.loads(rep.read_text())
    assert all(isinstance(layer["layer_separability"], float) for layer in report["passes"][0]["layers"])
    assert report["forget_classes"] == [3] and report["after"]["forget_accuracy"] < report["before"]["forget_accuracy"]
    edited, original = onnx.load(str(out)), onnx.load(str(MODEL))
    onnx.checker.check_model(edited)
    meta = {p.key: p.value for p in edited.metadata_props}
    assert json.loads(meta["onnx_damp.forget_classes"]) == [3]
    assert meta["onnx_damp.calibration_samples"] == "600"
    assert len(meta["onnx_damp.source_sha256"]) == 64
    assert set(json.loads(meta["onnx_damp.alpha"])) == {n.name for n in original.graph.node
                                                         if n.op_type in ("Conv", "Gemm")}
    assert [n.op_type for n in edited.graph.node] == [n.op_type for n in original.graph.node]
    assert edited.opset_import == original.opset_import and edited.ir_version == original.ir_version
    assert [i.name for i in edited.graph.input] == [i.name for i in original.graph.input]


def test_forget_json_output(tmp_path, small_calib):
    r = invoke("forget", MODEL, "--data", small_calib, "--forget", 1, "--forget", 7, "-o", tmp_path / "o.onnx",
               "--json", "-q", "--max-passes", 1)
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["forget_classes"] == [1, 7] and len(d["passes"]) == 1
    assert all(0.0 <= layer["alpha"] <= 1.0 for layer in d["passes"][0]["layers"])
    assert all(isinstance(layer["layer_separability"], float) for layer in d["passes"][0]["layers"])


def test_the_layer_probe_runs_only_where_its_values_are_shown():
    """Each layer's whole-space separability (reported only) is computed for -v, --json, --report and --html."""
    import click

    from onnx_damp.cli import _shows_layers, main

    with click.Context(main).scope() as ctx:
        assert not _shows_layers(False, False, None)
        assert _shows_layers(True, False, None) and _shows_layers(False, True, None)
        assert _shows_layers(False, False, "report.json")
        ctx.meta["onnx_damp.html"] = ("report.html", True, False)
        assert _shows_layers(False, False, None)


def test_evaluate_with_original_and_reference():
    ref = REF
    r = invoke("evaluate", MODEL, "--data", TEST, "--forget", 3, "--original", MODEL, "--reference", ref, "-q", "-v",
               "--no-gates")  # the original itself: not forgotten
    assert r.exit_code == 0, r.output
    assert "Per-class accuracy" in r.output and "retain agreement with original" in r.output
    d = json.loads(invoke("evaluate", MODEL, "--data", TEST, "--forget", 3, "--original", MODEL, "--json", "-q").stdout)
    assert d["retain_agreement"] == 1.0 and abs(d["retain_kl_original_to_model"]) < 1e-9
    assert d["model"]["forget_accuracy"] > 0.9


# ------------------------------------------------------------------------------------------ bad input
@pytest.fixture
def bad(tmp_path, small_calib):
    """Paths for the bad-input cases; each test checks that no output file appears."""
    return tmp_path


def forget_args(model, data, out, *extra):
    return ["forget", model, "--data", data, "-o", out, "-q", *extra]


def no_output(folder: Path, out: Path):
    assert not out.exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".onnx-damp")]


def test_missing_model(bad, small_calib):
    out = bad / "o.onnx"
    assert_user_error(invoke(*forget_args(bad / "nope.onnx", small_calib, out, "--forget", 3)), "not found")
    no_output(bad, out)


def test_not_an_onnx_file(bad, small_calib):
    junk = bad / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    out = bad / "o.onnx"
    assert_user_error(invoke(*forget_args(junk, small_calib, out, "--forget", 3)), "not")
    assert_user_error(invoke("inspect", junk), "not")
    no_output(bad, out)


def test_model_without_editable_operator(bad):
    path = bad / "softmax.onnx"
    onnx.save(no_weight_model(), str(path))
    data = bad / "d.npz"
    np.savez(data, x=np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32), y=np.array([0, 1, 2] * 2))
    out = bad / "o.onnx"
    assert_user_error(invoke(*forget_args(path, data, out, "--forget", 1)), "no editable operator")
    no_output(bad, out)


@pytest.mark.parametrize("forget,fragment", [(["--forget", 12], "out of range"),
                                             (["--forget", -1], "out of range")])
def test_class_out_of_range(bad, small_calib, forget, fragment):
    out = bad / "o.onnx"
    assert_user_error(invoke(*forget_args(MODEL, small_calib, out, *forget)), fragment)
    no_output(bad, out)


def test_class_absent_from_data(bad):
    with np.load(CALIB, allow_pickle=False) as z:
        keep = z["y"] != 4
        data = bad / "no4.npz"
        np.savez(data, x=z["x"][keep][::10], y=z["y"][keep][::10])
    out = bad / "o.onnx"
    assert_user_error(invoke(*forget_args(MODEL, data, out, "--forget", 4)), "no samples")
    no_output(bad, out)


def test_forgetting_every_class(bad, small_calib):
    out = bad / "o.onnx"
    args = [a for c in range(10) for a in ("--forget", c)]
    assert_user_error(invoke(*forget_args(MODEL, small_calib, out, *args)), "every class")
    no_output(bad, out)


def test_data_shape_does_not_fit(bad):
    data = bad / "wrong.npz"
    np.savez(data, x=np.zeros((20, 1, 14, 14), np.float32), y=np.arange(20) % 10)
    out = bad / "o.onnx"
    assert_user_error(invoke(*forget_args(MODEL, data, out, "--forget", 3)), "expects")
    no_output(bad, out)


def test_nan_in_data(bad, small_calib):
    with np.load(small_calib, allow_pickle=False) as z:
        x, y = z["x"].copy(), z["y"]
    x[5, 0, 3, 3] = np.nan
    data = bad / "nan.npz"
    np.savez(data, x=x, y=y)
    out = bad / "o.onnx"
    assert_user_error(invoke(*forget_args(MODEL, data, out, "--forget", 3)), "NaN")
    no_output(bad, out)


def test_pickled_data_is_refused(bad):
    data = bad / "pickled.npz"
    np.savez(data, x=np.array([object()], dtype=object), y=np.array([0]))
    assert_user_error(invoke(*forget_args(MODEL, data, bad / "o.onnx", "--forget", 0)), "pickle")


def test_output_equal_to_input(bad, small_calib):
    copy = bad / "model.onnx"
    copy.write_bytes(MODEL.read_bytes())
    before = copy.read_bytes()
    assert_user_error(invoke(*forget_args(copy, small_calib, copy, "--forget", 3)), "is the input model")
    assert copy.read_bytes() == before


def test_unwritable_output_folder(bad, small_calib):
    for out in (bad / "missing_dir" / "o.onnx", Path("/proc/onnx-damp-out.onnx")):
        assert_user_error(invoke(*forget_args(MODEL, small_calib, out, "--forget", 3)), "folder")
        assert not out.exists()


def test_evaluate_rejects_unknown_class():
    assert_user_error(invoke("evaluate", MODEL, "--data", TEST, "--forget", 10, "-q"), "out of range")


def test_help_imports_nothing_heavy():
    """`onnx-damp forget --help` must stay fast: no onnxruntime, onnx, numpy or scipy import, no pipeline module."""
    import subprocess
    import sys
    code = ("import sys\nfrom onnx_damp.cli import main\ntry:\n    main(['forget', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('onnxruntime', 'onnx', 'numpy', 'scipy', 'onnx_damp'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = out.strip().splitlines()[-1].split(",")
    assert set(loaded) <= {"onnx_damp", "onnx_damp.cli", "onnx_damp.errors", "onnx_damp.options",
                           "onnx_damp.runtime", "onnx_damp.runtime.allocator"}, loaded  # the last: os, sys, ctypes


def test_the_api_import_leaves_out_scipy_stats():
    """scipy.stats takes about 3 s to import on these machines, more than a small model's whole edit."""
    import subprocess
    import sys
    code = "import sys, onnx_damp.api, onnx_damp.method.pipeline\nprint('scipy.stats' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_options_are_one_source_of_defaults_for_the_api_and_the_cli():
    """MethodOptions / RunOptions fields: forget's keyword defaults and the CLI's defaults are theirs."""
    import inspect
    from dataclasses import fields

    import onnx_damp.api as api
    from onnx_damp.options import MethodOptions, RunOptions
    params = inspect.signature(api.forget).parameters
    for cls in (MethodOptions, RunOptions):
        for f in fields(cls):
            assert params[f.name].default == getattr(cls(), f.name), f.name
    cli_flags = {"features": "feature_mode", "max_passes": "max_passes", "target_forget_acc": "target_forget_accuracy",
                 "holdout": "holdout", "batch_size": "batch_size"}
    from onnx_damp.cli import main as cli_main
    opts = {p.name: p.default for p in cli_main.commands["forget"].params}
    for flag, field_name in cli_flags.items():
        cls = MethodOptions if hasattr(MethodOptions, field_name) else RunOptions
        assert opts[flag] == getattr(cls(), field_name), flag


def test_library_rejects_bad_options_in_one_line():
    import pytest

    import onnx_damp
    from onnx_damp.errors import DampError
    with pytest.raises(DampError, match="feature mode must be one of"):
        onnx_damp.forget("unused.onnx", None, [0], feature_mode="x")
    with pytest.raises(DampError, match="max_passes"):
        onnx_damp.forget("unused.onnx", None, [0], max_passes=0)


def test_default_output_is_compact_and_verbose_adds_the_tables(tmp_path, small_calib):
    r = invoke("forget", MODEL, "--data", small_calib, "--forget", 3, "-o", tmp_path / "c.onnx", "-q")
    assert r.exit_code == 0 and "Per-layer edit" not in r.output and "Validation on" in r.output
    assert len(r.output.strip().splitlines()) <= 15 and r.output.strip().splitlines()[-1].startswith("FORGOTTEN")
    v = invoke("forget", MODEL, "--data", small_calib, "--forget", 3, "-o", tmp_path / "v.onnx", "-q", "-v")
    assert "Per-layer edit" in v.output and len(v.output.splitlines()) > len(r.output.splitlines())


def test_progress_names_every_phase_writing_included_and_quiet_names_none(tmp_path, small_calib):
    """Without -q each phase ends with one "label: done/total in Ns" line on stderr (a log is not a tty),
    the atomic write and checker included (issue 14's breakdown); -q prints none."""
    import re

    pattern = re.compile(r"^([a-z ,\d-]+): \d+/\d+ in [\d.]+s$", re.M)
    loud = invoke("forget", MODEL, "--data", small_calib, "--forget", 3, "-o", tmp_path / "a.onnx")
    assert loud.exit_code == 0
    phases = pattern.findall(loud.stderr)
    assert phases[:2] == ["statistics", "planning"] and "held-out check" in phases and phases[-1] == "writing"
    quiet = invoke("forget", MODEL, "--data", small_calib, "--forget", 3, "-o", tmp_path / "b.onnx", "-q")
    assert quiet.exit_code == 0 and not pattern.findall(quiet.stderr)
