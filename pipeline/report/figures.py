"""The report's figures, drawn as the paper draws them (matplotlib, no display needed).

Curves (Figs. 4 and 6): one panel per `panel` of the table (plain beside residual), a colour per row, the same
in every panel, training error thin (Fig. 4) or dashed (Fig. 6), validation or test error bold, each row and each
style named once in one legend right of the panels (the styles in the caption's words); markers where a curve has
few points, "no data yet" where it has none.
Layer responses (Fig. 7): the std of each 3x3 layer's response, in layer order (top) and sorted in
descending order (bottom).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

DPI = 100
PANEL_SIZE = (5.0, 4.0)  # inches per panel
LEGEND_WIDTH = 2.6  # inches beside the panels for the curves' legend (Fig. 4's longest entry is 2.3)


def _pyplot():
    import matplotlib  # matplotlib: only when a figure is drawn

    matplotlib.use("Agg")  # files only: clusters have no display
    import matplotlib.pyplot as plt

    return plt


# How each figure's caption says its line styles, per evaluation split: Fig. 4 (ImageNet, "val") "Thin curves
# denote training error, and bold curves denote validation error of the center crops"; Fig. 6 (CIFAR, "test")
# "Dashed lines denote training error, and bold lines denote testing error".
CAPTION_STYLES = {
    "val": {"train": ("thin curves: training error", "-"), "eval": "bold curves: validation error (centre crop)"},
    "test": {"train": ("dashed lines: training error", "--"), "eval": "bold lines: testing error"},
}
FEW_POINTS = 30  # a curve with fewer is drawn with markers: one or two logged points are otherwise invisible


def plot_curves(title: str, metrics: Sequence[str], rows: Sequence[tuple[str, str | None, object]], out: Path,
                eval_split: str = "val") -> Path:
    """rows: (label, panel, RunReading or None); `metrics` = [training metric, validation metric]; `eval_split`:
    what the bold curves are measured on ("val": Fig. 4's words, "test": Fig. 6's).

    A row has one colour in every panel (Fig. 6 shows ResNet-110 in two), and the legend names each row once,
    beside the panels rather than over them: inside a panel it hid the curves that end in its corner."""
    plt = _pyplot()
    from matplotlib.lines import Line2D  # matplotlib: only when a figure is drawn

    styles = CAPTION_STYLES.get(eval_split, CAPTION_STYLES["val"])
    train_words, train_style = styles["train"]
    panels = list(dict.fromkeys(panel or "" for _, panel, _ in rows))
    # constrained: the legend outside the panels gets its room from them, the figure keeps its size.
    fig, axes = plt.subplots(1, len(panels), figsize=_curves_inches(len(panels)), dpi=DPI, squeeze=False,
                             layout="constrained")
    train_metric, val_metric = (list(metrics) + [None])[:2]
    colour_of = row_colours([label for label, _, _ in rows])
    drawn: dict[str, bool] = dict.fromkeys(colour_of, False)
    for ax, panel in zip(axes[0], panels):
        panel_drawn = False
        for label, run in [(label, run) for label, p, run in rows if (p or "") == panel]:
            curves = run.curves if run is not None else {}
            for metric, style, width in ((train_metric, train_style, 0.8), (val_metric, "-", 2.2)):
                points = curves.get(metric) or []
                if points:
                    ax.plot(*zip(*points), color=colour_of[label], linewidth=width, linestyle=style,
                            marker="o" if len(points) < FEW_POINTS else None, markersize=3)
            row_drawn = any(curves.get(m) for m in (train_metric, val_metric))
            drawn[label] = drawn[label] or row_drawn
            panel_drawn = panel_drawn or row_drawn
        if not panel_drawn:
            ax.text(0.5, 0.5, "no data yet", transform=ax.transAxes, ha="center", va="center", color="grey")
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_title(panel)  # a figure of one unnamed panel has the suptitle alone
        ax.set_xlabel("iterations")
        ax.set_ylabel("error (%)")
        ax.grid(alpha=0.3)
    # Each row once by its colour, then each line style once, in the caption's words.
    handles = [Line2D([], [], color=colour, linewidth=2.2, label=label if drawn[label] else f"{label} (no data yet)")
               for label, colour in colour_of.items()]
    handles += [Line2D([], [], color="black", linewidth=0.8, linestyle=train_style, label=train_words),
                Line2D([], [], color="black", linewidth=2.2, label=styles["eval"])]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.savefig(out)
    plt.close(fig)
    return out


def row_colours(labels: Sequence[str]) -> dict[str, str]:
    """One colour per row label, in the order rows first appear: matplotlib's 10, or tab20's 20 for more rows."""
    plt = _pyplot()
    unique = list(dict.fromkeys(labels))
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if len(unique) > len(cycle):
        from matplotlib.colors import to_hex  # matplotlib: only when a figure is drawn

        cycle = [to_hex(colour) for colour in plt.get_cmap("tab20").colors]
    return {label: cycle[i % len(cycle)] for i, label in enumerate(unique)}


def _curves_inches(panels: int) -> tuple[float, float]:
    return PANEL_SIZE[0] * panels + LEGEND_WIDTH, PANEL_SIZE[1]


def plot_responses(table, rows: Sequence[tuple[str, list[float] | None]], out: Path) -> Path:
    """rows: (label, per-layer std or None)."""
    plt = _pyplot()
    fig, (by_layer, by_size) = plt.subplots(2, 1, figsize=(PANEL_SIZE[0] * 2, PANEL_SIZE[1] * 2), dpi=DPI)
    for label, stds in rows:
        if not stds:
            by_layer.plot([], [], label=f"{label} (no data yet)")
            by_size.plot([], [])
            continue
        layers = range(1, len(stds) + 1)
        by_layer.plot(layers, stds, marker=".", linewidth=1, label=label)
        by_size.plot(layers, sorted(stds, reverse=True), marker=".", linewidth=1)
    by_layer.set_xlabel("layer index (original)")
    by_size.set_xlabel("layer index (sorted by magnitude)")
    from matplotlib.ticker import MaxNLocator  # matplotlib: only when a figure is drawn

    for ax in (by_layer, by_size):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("std")
        ax.grid(alpha=0.3)
    by_layer.legend(fontsize=8)
    fig.suptitle(table.title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def figure_size(kind: str, panels: int = 1) -> tuple[int, int]:
    """The pixel size (width, height) of a figure, as written: for tests and for embedding."""
    if kind == "curves":
        width, height = _curves_inches(panels)
        return round(width * DPI), round(height * DPI)
    return round(PANEL_SIZE[0] * 2 * DPI), round(PANEL_SIZE[1] * 2 * DPI)
