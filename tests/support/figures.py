"""The report's figures as they were drawn: each saved matplotlib figure kept, to be read back by its lines,
legend and panels, and in pixels where the question is what the PNG shows (a colour, a legend over a curve)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def saved_figures(monkeypatch) -> list:
    """Every matplotlib figure saved from here on, kept as it was drawn: the lines, legends and titles that its
    PNG shows, to be read back by what they hold rather than by counting pixels. The real savefig still writes."""
    from matplotlib.figure import Figure

    saved, savefig = [], Figure.savefig

    def keep(figure, *args, **kwargs):
        saved.append(figure)
        return savefig(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return saved


def png_pixels(png: Path) -> np.ndarray:
    """The PNG as rows x columns x RGB integers, row 0 at the top."""
    with Image.open(png) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def pixels_of(pixels: np.ndarray, rgb: tuple, box=None, tolerance: int = 6) -> int:
    """How many pixels are `rgb` (within `tolerance`, summed over R, G and B), inside `box` where given: a
    matplotlib Bbox in display units (the PNG's pixels when saved at the figure's dpi, y counted from the bottom)."""
    if box is not None:
        height = pixels.shape[0]
        top, bottom = max(int(height - box.y1), 0), min(int(np.ceil(height - box.y0)), height)
        pixels = pixels[top:bottom, max(int(box.x0), 0):int(np.ceil(box.x1))]
    return int((np.abs(pixels - np.array(rgb)).sum(axis=2) <= tolerance).sum())
