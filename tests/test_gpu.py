"""--device cuda: a clear one-line error when CUDA is missing or silently falls back to CPU; the same
statistics as on CPU up to float tolerance where a CUDA GPU is present (skipped without one)."""
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import onnx_damp
from onnx_damp import DampError
from onnx_damp.cli import main
from onnx_damp.runtime.session import make_session

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "mnist"
MODEL, CALIB = SAMPLE / "model.onnx", SAMPLE / "calib.npz"

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDAExecutionProvider in this onnxruntime")


@pytest.fixture
def cuda_falls_back(monkeypatch):
    """onnxruntime claims CUDA but the session it creates runs on CPU only (e.g. a missing cuDNN)."""
    real = ort.InferenceSession

    def cpu_session(model, opts=None, providers=None, **kw):
        return real(model, opts, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", cpu_session)


def test_cuda_that_falls_back_to_cpu_is_an_error(cuda_falls_back):
    with pytest.raises(DampError, match="--device cuda: onnxruntime fell back to CPU") as e:
        make_session(onnx.load(str(MODEL)), "cuda")
    assert "\n" not in str(e.value)
    make_session(onnx.load(str(MODEL)), "cpu")  # CPU is unaffected


def test_cli_collect_reports_the_fallback_in_one_line(cuda_falls_back, tmp_path):
    r = CliRunner().invoke(main, ["collect", str(MODEL), "--data", str(CALIB), "-o", str(tmp_path / "s.npz"),
                                  "--device", "cuda", "-q"])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [r.output.strip()] and "fell back to CPU" in r.output


def test_cuda_without_the_provider_is_an_error(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(DampError, match="no CUDA execution provider .*onnx-damp\\[gpu\\]"):
        make_session(onnx.load(str(MODEL)), "cuda")


@needs_cuda
def test_cuda_statistics_match_cpu():
    """Same statistics on GPU and CPU up to float32 tolerance (cuDNN picks other conv algorithms, TF32 may apply)."""
    with np.load(CALIB, allow_pickle=False) as z:
        x, y = z["x"], z["y"]
    idx = np.sort(np.concatenate([np.flatnonzero(y == c)[:50] for c in range(10)]))
    cpu = onnx_damp.collect(MODEL, (x[idx], y[idx]), device="cpu")
    gpu = onnx_damp.collect(MODEL, (x[idx], y[idx]), device="cuda")
    assert gpu.samples == cpu.samples and gpu.provenance.same_model(cpu.provenance)
    for node, lc in cpu.layers.items():
        lg = gpu.layers[node]
        assert lg.rows == lc.rows
        for c in lc.sums:
            np.testing.assert_allclose(lg.sums[c], lc.sums[c], rtol=1e-3, atol=1e-3 * np.abs(lc.sums[c]).max())
            np.testing.assert_allclose(lg.grams[c], lc.grams[c], rtol=1e-3, atol=1e-3 * np.abs(lc.grams[c]).max())


@needs_cuda
def test_forget_on_cuda_forgets(tmp_path):
    res = onnx_damp.forget(MODEL, CALIB, [3], eval_data=SAMPLE / "test.npz", device="cuda", feature_samples=0)
    assert res.after.forget_accuracy <= 0.01
