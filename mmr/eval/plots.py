"""PNG plots for run reports: line charts of logged metrics and a bar chart of accuracies.

    line_plot("sft_loss.png", "SFT loss", {"train/loss": (steps, values)}, xlabel="step")
    bar_plot("accuracy.png", "Held-out accuracy", {"base": 0.1, "sft": 0.6}, hline=("chance", 0.3))

matplotlib (Agg backend, no display needed) draws them when it is installed; otherwise a
plain Pillow drawing of the same chart is written, so a report never lacks its figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["bar_plot", "line_plot"]

Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def line_plot(path: str | Path, title: str, series: Series, *, xlabel: str = "step") -> Path:
    """One line per named series of (x, y) values."""
    plt = _pyplot()
    if plt is None:
        return _pil_chart(path, title, series, bars=None)
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for (name, (xs, ys)), colour in zip(series.items(), COLOURS):
        ax.plot(xs, ys, label=name, color=colour, marker="o" if len(xs) < 30 else None, ms=3)
    ax.set(title=title, xlabel=xlabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def bar_plot(
    path: str | Path, title: str, values: Mapping[str, float],
    hline: tuple[str, float] | None = None,
) -> Path:  # fmt: skip
    """One bar per name (0..1 scale), with an optional dashed reference line."""
    plt = _pyplot()
    if plt is None:
        return _pil_chart(path, title, {}, bars=(values, hline))
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=100)
    names = list(values)
    ax.bar(names, [values[n] for n in names], color=COLOURS[: len(names)])
    for i, n in enumerate(names):
        ax.text(i, values[n] + 0.01, f"{values[n]:.2f}", ha="center", fontsize=9)
    if hline is not None:
        ax.axhline(hline[1], ls="--", color="gray", label=f"{hline[0]} {hline[1]:.2f}")
        ax.legend(fontsize=8)
    ax.set(title=title, ylim=(0, 1.05), ylabel="accuracy")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def _pil_chart(
    path: str | Path, title: str, series: Series,
    bars: tuple[Mapping[str, float], tuple[str, float] | None] | None,
) -> Path:  # fmt: skip
    """The same charts drawn with Pillow: axes, lines or bars, a legend, no fonts needed."""
    from PIL import Image, ImageDraw

    w, h, left, top, right, bottom = 600, 360, 50, 30, 20, 40
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.text((left, 8), title, fill="black")
    d.rectangle((left, top, w - right, h - bottom), outline="black")
    if bars is not None:
        values, hline = bars
        ys = [0.0, 1.0]
        xs = [0.0, float(max(len(values), 1))]
    else:
        ys = [float(y) for _, v in series.values() for y in v if y is not None] or [0.0, 1.0]
        xs = [float(x) for v, _ in series.values() for x in v] or [0.0, 1.0]
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (w - left - right),
                h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom))  # fmt: skip

    d.text((4, top), f"{y1:.3g}", fill="black")
    d.text((4, h - bottom - 10), f"{y0:.3g}", fill="black")
    if bars is not None:
        for i, (name, v) in enumerate(values.items()):
            a, b = px(i + 0.2, v), px(i + 0.8, 0)
            d.rectangle((a[0], a[1], b[0], b[1]), fill=COLOURS[i % len(COLOURS)])
            d.text((a[0], h - bottom + 5), f"{name} {v:.2f}", fill="black")
        if hline is not None:
            d.line((px(x0, hline[1]), px(x1, hline[1])), fill="gray", width=1)
            d.text(
                (w - right - 120, px(x0, hline[1])[1] - 12),
                f"{hline[0]} {hline[1]:.2f}",
                fill="black",
            )
    for k, (name, (xv, yv)) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        points = [px(float(x), float(y)) for x, y in zip(xv, yv) if y is not None]
        if len(points) > 1:
            d.line(points, fill=colour, width=2)
        d.text((w - right - 150, top + 5 + 12 * k), name, fill=colour)
    img.save(path)
    return Path(path)
