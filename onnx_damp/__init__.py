"""onnx-damp: make a deployed ONNX classifier forget classes with DAMP (one-shot weight projection)."""

__version__ = "0.1.0"

from onnx_damp.errors import DampError  # noqa: E402


def __getattr__(name):
    """Load the API lazily so `onnx-damp --help` does not import onnxruntime."""
    if name in ("forget", "evaluate", "inspect", "collect", "ForgetResult", "EvaluateResult", "InspectResult",
                "Gates"):
        from onnx_damp import api
        return getattr(api, name)
    if name in ("write_html", "render_html"):
        from onnx_damp.report import html as html_report
        return getattr(html_report, name)
    if name == "Statistics":
        from onnx_damp.stats.statistics import Statistics
        return Statistics
    if name == "merge":
        from onnx_damp.stats.shards import merge
        return merge
    raise AttributeError(name)


__all__ = ["forget", "evaluate", "inspect", "collect", "merge", "Statistics", "Gates", "DampError", "write_html",
           "render_html", "__version__"]
