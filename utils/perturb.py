"""Prediction-like copies of label maps: the challenge metric's benchmark
(benchmarks/bench_metric.py) and its parity check with the challenge's script
(benchmarks/check_metric_parity.py) score a label map against one.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def perturb(label: np.ndarray, rng: np.random.Generator, drop: float = 0.1,
            split: float = 0.1) -> np.ndarray:
    """A prediction-like ``(H, W) int32`` copy of an ``(H, W)`` label map: shifted by up to 2 px
    (zeros shifted in), eroded by 1 px, a ``drop`` fraction of its cells removed and a ``split``
    fraction split in two (the pixels right of a cell's mean column get a new id)."""
    lab = label.astype(np.int32)
    dy, dx = (int(v) for v in rng.integers(-2, 3, 2))
    out = np.zeros_like(lab)
    h, w = lab.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        lab[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    out[ndimage.grey_dilation(out, size=3) != ndimage.grey_erosion(out, size=3)] = 0  # 1-px erosion
    n = int(out.max())
    if n == 0:
        return out
    ids = np.arange(1, n + 1)
    lut = np.arange(n + 1, dtype=np.int32)
    lut[rng.choice(ids, int(round(drop * n)), replace=False)] = 0
    out = lut[out]
    # split: pixels right of their cell's mean column get a new id
    cols = np.broadcast_to(np.arange(w), out.shape)
    area = np.bincount(out.ravel(), minlength=n + 1)
    mean_x = np.bincount(out.ravel(), weights=cols.ravel(), minlength=n + 1) / np.maximum(area, 1)
    to_split = np.zeros(n + 1, bool)
    to_split[rng.choice(ids, int(round(split * n)), replace=False)] = True
    to_split[0] = False
    move = to_split[out] & (cols > mean_x[out])
    out[move] += n
    return out
