"""Boxes of instance label maps (numpy, ``(N, 4) xyxy`` pixels)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def label_to_boxes(label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Instance label map ``(H, W)`` -> ``(ids (N,) int32, boxes (N, 4) float32 xyxy pixels)``.

    x2/y2 are exclusive (a one-pixel cell at (x, y) has the box (x, y, x+1, y+1)). Ids absent
    from the map are skipped.
    """
    slices = ndimage.find_objects(np.asarray(label))
    ids, boxes = [], []
    for idx, sl in enumerate(slices, start=1):
        if sl is None:
            continue
        ids.append(idx)
        boxes.append((sl[1].start, sl[0].start, sl[1].stop, sl[0].stop))
    return np.asarray(ids, np.int32), np.asarray(boxes, np.float32).reshape(-1, 4)

