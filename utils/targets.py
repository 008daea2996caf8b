"""Dense training targets computed from an instance label map.

The watershed branch of the AWF learns a foreground probability and a "height" map: each cell's
Euclidean distance transform divided by (that cell's median distance + 1), as the original
framework defines it. The height is about 1 in a cell's middle whatever its size, so one set of
thresholds (0.8 core, 1.5 peaks: utils/watershed.py) serves cells of 10 and of 400 pixels.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def instance_edt(label: np.ndarray) -> np.ndarray:
    """Per-instance Euclidean distance to the cell's own border, ``(H, W) float32`` pixels.

    Touching cells are separated: each cell is measured on its own crop (one loop over cells,
    a few pixels of padding so the image border counts as outside).
    """
    label = np.asarray(label)
    out = np.zeros(label.shape, np.float32)
    for idx, sl in enumerate(ndimage.find_objects(label), start=1):
        if sl is None:
            continue
        crop = np.pad(label[sl] == idx, 1)
        dist = ndimage.distance_transform_edt(crop)[1:-1, 1:-1]
        region = out[sl]
        inside = crop[1:-1, 1:-1]
        region[inside] = dist[inside]
    return out


def height_map(label: np.ndarray, edt: np.ndarray | None = None) -> np.ndarray:
    """Height target ``(H, W) float32``: EDT / (median EDT of the cell + 1); 0 on background."""
    label = np.asarray(label)
    edt = instance_edt(label) if edt is None else edt
    n = int(label.max(initial=0))
    if n == 0:
        return np.zeros(label.shape, np.float32)
    ids = np.arange(1, n + 1)
    med = np.asarray(ndimage.median(edt, label, ids), np.float32)
    med = np.nan_to_num(med, nan=0.0)
    lut = np.concatenate([[1.0], med + 1.0]).astype(np.float32)
    return (edt / lut[label]).astype(np.float32)
