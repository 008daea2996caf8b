"""Figures: training curves (results.png) and instance-outline overlays."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from skimage.segmentation import find_boundaries

from utils.io import normalize_image

LOGGER = logging.getLogger(__name__)

# Outline colours of overlays: cell id i gets the fully saturated hue (i * OVERLAY_HUE_STEP) mod 1.
# The golden-ratio step (this project's choice) gives consecutive ids (neighbours, as cells are
# numbered in scan order) hues far apart; ids 1..990 get 990 different colours (8-bit RGB).
OVERLAY_HUE_STEP = 0.6180339887498949

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


def label_colors(ids) -> np.ndarray:
    """Outline colours of cell ids: ``(N,) int -> (N, 3) uint8`` RGB, the hue
    ``(id * OVERLAY_HUE_STEP) mod 1`` at full saturation and value."""
    hue = (np.asarray(ids, np.float64) * OVERLAY_HUE_STEP) % 1.0 * 6.0   # 0..6 around the wheel
    # HSV -> RGB with S = V = 1: each channel is a clipped triangle wave of the hue
    rgb = np.clip(np.abs((hue[:, None] + np.array([0.0, 4.0, 2.0])) % 6.0 - 3.0) - 1.0, 0.0, 1.0)
    return np.round(rgb * 255).astype(np.uint8)


def display_image(raw: np.ndarray) -> np.ndarray:
    """A raw image ``(H, W)`` or ``(H, W, C)`` as 8-bit RGB ``(H, W, 3) uint8`` for a figure: a
    uint8 image keeps its pixel values (grey repeated, two channels in green and blue, alpha
    dropped); another dtype (16-bit, float) gets the network's percentile stretch
    (utils.io.normalize_image)."""
    if raw.ndim == 2:
        raw = raw[..., None]
    if raw.dtype != np.uint8:
        return normalize_image(raw)
    c = raw.shape[2]
    if c == 1:
        return np.repeat(raw, 3, axis=2)
    if c == 2:
        return np.concatenate([np.zeros_like(raw[..., :1]), raw], axis=2)
    return np.ascontiguousarray(raw[..., :3])


def overlay_outlines(image: np.ndarray, label: np.ndarray) -> np.ndarray:
    """The raw image ``(H, W[, C])`` as 8-bit RGB (:func:`display_image`, so a uint8 RGB image is
    unchanged off the outlines) with each cell of ``label`` ``(H, W)`` outlined (its own inner
    boundary pixels) in its own colour (:func:`label_colors`) -> ``(H, W, 3) uint8``."""
    out = display_image(image).copy()
    edge = find_boundaries(label, mode="inner") & (label > 0)
    out[edge] = label_colors(label[edge])
    return out
