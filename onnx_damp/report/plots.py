"""The figures of the HTML report, as PNG bytes. matplotlib is an optional extra (`pip install 'onnx-damp[report]'`).

Nothing here reads ONNX or the result objects: each function takes plain lists. matplotlib is imported
lazily and drawn through its Agg canvas (no pyplot, no global backend state, no display needed).
"""
from __future__ import annotations

import io
from typing import Sequence

from onnx_damp.errors import DampError

INSTALL_HINT = "pip install 'onnx-damp[report]'"

# colours: original grey, edited/model blue, reference green; forget classes red
ORIGINAL, MODEL, REFERENCE, FORGET = "#9e9e9e", "#1f77b4", "#2ca02c", "#d62728"
DPI = 130  # figures are sized in inches for about 100 px per inch on the page; the extra for sharpness
SERIES_COLORS = {"original": ORIGINAL, "model": MODEL, "reference": REFERENCE}


def require_matplotlib() -> None:
    """Raise a one-line DampError when matplotlib cannot be imported (call before any long work)."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError:
        raise DampError(f"--html needs matplotlib, an optional extra: {INSTALL_HINT}") from None


def _figure(width: float = 5.6, height: float = 3.4):
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def css_width(png: bytes) -> int:
    """The width in CSS pixels a figure is drawn for (100 px per inch), read from the PNG header."""
    return int(int.from_bytes(png[16:20], "big") * 100 / DPI)


def _tick_labels(ax, labels: Sequence[str], marked: Sequence[bool]) -> None:
    many = len(labels) > 12 or max((len(s) for s in labels), default=0) > 4
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=45 if many else 0, ha="right" if many else "center",
                       fontsize=8 if len(labels) > 30 else 9)
    for tick, m in zip(ax.get_xticklabels(), marked):
        if m:
            tick.set_color(FORGET)
            tick.set_fontweight("bold")


def grouped_bars(labels: Sequence[str], series: dict[str, Sequence[float | None]], *, marked: Sequence[bool],
                 ylabel: str, ylim: tuple[float, float] | None = None,
                 names: dict[str, str] | None = None) -> bytes:
    """Bars per label, one colour per series ("original", "model", "reference"); marked labels in red, and their
    bars outlined in red and hatched. None values are left out."""
    fig = _figure(min(11.0, max(9.0, 1.5 + 0.12 * len(labels) * max(1, len(series)))), 3.4)
    ax = fig.add_subplot(1, 1, 1)
    n = max(1, len(series))
    width = 0.8 / n
    for j, (key, values) in enumerate(series.items()):
        xs = [i + (j - (n - 1) / 2) * width for i in range(len(labels))]
        heights = [0.0 if v is None else v for v in values]
        bars = ax.bar(xs, heights, width, color=SERIES_COLORS.get(key, MODEL))
        for bar, m, v in zip(bars, marked, values):
            if v is None:
                bar.set_visible(False)
            elif m:
                bar.set_edgecolor(FORGET)
                bar.set_linewidth(1.5)
                bar.set_hatch("//")
                ax.annotate(f"{v:.0f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                            va="bottom", fontsize=7, color=FORGET, xytext=(0, 1), textcoords="offset points")
    _tick_labels(ax, labels, marked)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    from matplotlib.patches import Patch

    handles = [Patch(color=SERIES_COLORS.get(key, MODEL), label=(names or {}).get(key, key)) for key in series]
    ax.legend(handles=handles, fontsize=9, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(series),
              frameon=False)
    return _png(fig)


def depth_lines(lines: dict[str, tuple[Sequence[float], Sequence[float | None]]], *, ylabel: str,
                styles: dict[str, dict] | None = None, ylim: tuple[float, float] | None = (0.0, 1.05)) -> bytes:
    """One line per name: (normalised depths, values) with markers; None values are gaps."""
    fig = _figure(5.6, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    for name, (xs, ys) in lines.items():
        style = {"marker": "o", "markersize": 4, "linewidth": 1.6, **((styles or {}).get(name, {}))}
        ax.plot(list(xs), [float("nan") if v is None else v for v in ys], label=name, **style)
    ax.set_xlabel("normalised depth (0 = first editable operator, 1 = last)", fontsize=9)
    ax.set_xlim(-0.03, 1.03)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _png(fig)
