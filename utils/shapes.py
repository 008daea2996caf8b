"""Cell outlines for Fiji and QuPath: an instance label -> polygons, ImageJ ROI zip, GeoJSON.

Coordinates are pixels with the origin at the top-left corner of the image (x right, y down),
the convention of ImageJ and QuPath: pixel (row r, column c) covers [c, c+1) x [r, r+1), its centre
is (c + 0.5, r + 0.5). Outlines are marching-squares contours of each cell's mask at level 0.5,
so a polygon passes between the cell's border pixels and its neighbours: filling it by pixel
centres (ImageJ, QuPath, ``skimage.draw.polygon`` on ``xy - 0.5``) gives the cell's pixels back
(8-connected pieces are joined; a hole is an interior ring in GeoJSON).

    write_rois(path, label)      # NAME_rois.zip: one ImageJ polygon ROI per cell (roifile)
    write_geojson(path, label)   # NAME.geojson: a FeatureCollection, one feature per cell
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage import measure

from utils.io import atomic_write

LOGGER = logging.getLogger(__name__)
ROIS_SUFFIX = "_rois.zip"
GEOJSON_SUFFIX = ".geojson"


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    """A closed ring ``(N, 2)`` (last == first) without its collinear middle vertices, closed."""
    pts = ring[:-1]
    if len(pts) < 4:
        return ring
    prev, nxt = np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0)
    cross = (pts[:, 0] - prev[:, 0]) * (nxt[:, 1] - pts[:, 1]) \
        - (pts[:, 1] - prev[:, 1]) * (nxt[:, 0] - pts[:, 0])
    keep = pts[np.abs(cross) > 1e-9]
    return np.vstack([keep, keep[:1]]) if len(keep) >= 3 else ring


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _inside(point: np.ndarray, ring: np.ndarray) -> bool:
    """Even-odd test of ``point (2,)`` against a closed ring ``(N, 2)``."""
    x, y = point
    x0, y0, x1, y1 = ring[:-1, 0], ring[:-1, 1], ring[1:, 0], ring[1:, 1]
    crosses = (y0 > y) != (y1 > y)
    xs = x0 + (y - y0) * (x1 - x0) / np.where(y1 == y0, 1.0, y1 - y0)
    return bool(np.count_nonzero(crosses & (x < xs)) % 2)


def mask_polygons(mask: np.ndarray, offset=(0, 0)) -> list[list[np.ndarray]]:
    """Polygons of a boolean mask: a list of ``[outer, hole, ...]`` rings, each ``(N, 2) float64``
    closed (x, y) in corner-origin pixel coordinates; ``offset`` = (row, col) of ``mask[0, 0]``.
    Largest polygon first."""
    padded = np.pad(mask.astype(np.float32), 1)
    rings = []
    for contour in measure.find_contours(padded, 0.5, fully_connected="high"):
        # (row, col) of the padded array -> (x, y) of the image, corner origin: + 0.5 - 1 (pad)
        xy = np.stack([contour[:, 1] + offset[1] - 0.5, contour[:, 0] + offset[0] - 0.5], axis=1)
        if not np.array_equal(xy[0], xy[-1]):
            xy = np.vstack([xy, xy[:1]])
        rings.append(_drop_collinear(xy))
    areas = [_signed_area(r) for r in rings]
    if not rings:
        return []
    # outer rings and holes wind in opposite directions; the largest ring is an outer one
    outer_sign = np.sign(areas[int(np.argmax(np.abs(areas)))])
    outers = [i for i, a in enumerate(areas) if np.sign(a) == outer_sign]
    polys = {i: [rings[i]] for i in outers}
    for i, a in enumerate(areas):
        if np.sign(a) != outer_sign:
            home = [j for j in outers if _inside(rings[i][0], rings[j])]
            if home:  # the smallest outer ring around the hole
                polys[min(home, key=lambda j: abs(areas[j]))].append(rings[i])
    return [polys[i] for i in sorted(outers, key=lambda j: -abs(areas[j]))]


def label_polygons(label: np.ndarray) -> dict[int, list[list[np.ndarray]]]:
    """Instance id -> its polygons (see :func:`mask_polygons`), ids in increasing order."""
    label = np.asarray(label)
    out = {}
    for idx, sl in enumerate(ndimage.find_objects(label)):
        if sl is None:
            continue
        cell_id = idx + 1
        polys = mask_polygons(label[sl] == cell_id, offset=(sl[0].start, sl[1].start))
        if polys:
            out[cell_id] = polys
    return out


def write_rois(path, label: np.ndarray) -> int:
    """ImageJ/Fiji ROI set (zip, roifile): one polygon ROI per cell (its largest piece, without
    holes), named by its instance id. Returns the number of ROIs; no file when there is none
    (Fiji cannot open an empty ROI set), and a stale one is removed."""
    from roifile import ImagejRoi, roiwrite
    rois = []
    for cell_id, polys in label_polygons(label).items():
        roi = ImagejRoi.frompoints(polys[0][0][:-1].astype(np.float32), name=f"{cell_id:05d}")
        rois.append(roi)
    path = Path(path)
    if not rois:
        path.unlink(missing_ok=True)
        return 0
    with atomic_write(path) as tmp:
        roiwrite(tmp, rois, mode="w")
    return len(rois)


def geojson_features(label: np.ndarray) -> list[dict]:
    """One GeoJSON Feature per cell: a Polygon (MultiPolygon when in pieces), QuPath detection."""
    features = []
    for cell_id, polys in label_polygons(label).items():
        rings = [[[[round(float(x), 2), round(float(y), 2)] for x, y in ring] for ring in poly]
                 for poly in polys]
        geometry = ({"type": "Polygon", "coordinates": rings[0]} if len(rings) == 1
                    else {"type": "MultiPolygon", "coordinates": rings})
        features.append({"type": "Feature", "id": str(cell_id), "geometry": geometry,
                         "properties": {"objectType": "detection", "name": str(cell_id),
                                        "label": cell_id}})
    return features


def write_geojson(path, label: np.ndarray) -> int:
    """QuPath-readable GeoJSON FeatureCollection of the cells (File > Import objects, or drag the
    file onto the image). Returns the number of features."""
    features = geojson_features(label)
    with atomic_write(path) as tmp:
        Path(tmp).write_text(json.dumps({"type": "FeatureCollection", "features": features},
                                        separators=(",", ":")))
    return len(features)


def write_outlines(out_dir, stem: str, label: np.ndarray, rois: bool = False,
                   geojson: bool = False) -> None:
    """predict.py --save-rois / --save-geojson: OUT/NAME_rois.zip and OUT/NAME.geojson."""
    if rois:
        write_rois(Path(out_dir) / (stem + ROIS_SUFFIX), label)
    if geojson:
        write_geojson(Path(out_dir) / (stem + GEOJSON_SUFFIX), label)
