"""Figures: training curves (results.png) and instance-outline overlays."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from skimage.segmentation import find_boundaries

LOGGER = logging.getLogger(__name__)

# Outline colour of overlays (RGB): yellow reads on dark fluorescence and light brightfield alike.
OVERLAY_COLOR = (255, 220, 0)


def plot_results(csv_path) -> Path | None:
    """Plot every numeric column of a results.csv against the epoch into results.png beside it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    csv_path = Path(csv_path)
    df = pd.read_csv(csv_path)
    cols = [c for c in df.columns if c not in ("epoch", "seconds") and pd.api.types.is_numeric_dtype(df[c])]
    if df.empty or not cols:
        return None
    ncol = min(5, len(cols))
    nrow = (len(cols) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.6 * nrow), squeeze=False)
    for ax, col in zip(axes.flat, cols):
        series = df[["epoch", col]].dropna()
        ax.plot(series["epoch"] + 1, series[col], marker=".", linewidth=1.5)
        ax.set_title(col, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(cols):]:
        ax.axis("off")
    fig.tight_layout()
    out = csv_path.with_name("results.png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def overlay_outlines(image: np.ndarray, label: np.ndarray, color=OVERLAY_COLOR) -> np.ndarray:
    """Network image ``(H, W, 3) uint8`` with the outlines of ``label`` ``(H, W)`` drawn in ``color``."""
    out = image.copy()
    out[find_boundaries(label, mode="inner")] = color
    return out
