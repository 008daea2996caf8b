"""The folder-prediction loop shared by predict.py and evaluate.py.

Reads each image (all formats of utils/io), routes and segments it, writes NAME_label.tiff
atomically (and an overlay PNG on request), records per-image information, and goes on when a
file fails: failures are collected with a one-line reason each.

Pseudo-label mode (``pseudo=True``, predict.py --pseudo) also writes NAME_ignore.png: the pixels
the model is unsure about (:func:`uncertain_mask`), which train_weakly.py leaves out of the loss
instead of learning them as background.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from utils.dataset import IGNORE_SUFFIX  # NAME_ignore.png beside NAME_label.tiff
from utils.io import InputError, LABEL_SUFFIX, normalize_image, read_image, write_image, write_label
from utils.plots import overlay_outlines
from utils.shapes import write_outlines

LOGGER = logging.getLogger(__name__)

# Pseudo-label ignore band: a background pixel whose foreground probability lies strictly between
# these is uncertain (a symmetric band around the 0.5 decision threshold; this project's choice).
PSEUDO_IGNORE_LOW = 0.3
PSEUDO_IGNORE_HIGH = 0.7


@dataclass
class PredictionRecord:
    """What happened to one image."""

    name: str
    modality: str = ""
    branch: str = ""
    n_cells: int = 0
    confidence: float = 0.0       # mean foreground probability over pixels above 0.5
    diameter: float = 0.0         # median cell diameter, pixels (utils.inference.median_diameter)
    seconds: float = 0.0
    label_path: str = ""          # relative to the output folder (NAME_label.tiff)
    image: str = ""               # the source image, relative to the output folder when possible


@dataclass
class RunSummary:
    records: list[PredictionRecord] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)   # one line each: "path: reason"


def shard(files: list[Path], rank: int, world_size: int) -> list[Path]:
    """This rank's share of the input list (torchrun: rank r takes files r, r + W, ...)."""
    return files[max(rank, 0)::max(world_size, 1)]


def uncertain_mask(fg: np.ndarray, label: np.ndarray) -> np.ndarray:
    """``(H, W) bool``: pixels outside every instance (``label == 0``) whose foreground probability
    ``fg (H, W) float32`` is in (PSEUDO_IGNORE_LOW, PSEUDO_IGNORE_HIGH)."""
    return (fg > PSEUDO_IGNORE_LOW) & (fg < PSEUDO_IGNORE_HIGH) & (label == 0)


def _write_ignore(path: Path, fg: np.ndarray | None, label: np.ndarray) -> None:
    """Pseudo mode: NAME_ignore.png (255 = ignored); without a fg map (chunked whole-slide
    image, Omnipose branch) no mask, and a stale one from an earlier run is removed."""
    if fg is None:
        path.unlink(missing_ok=True)
        return
    write_image(path, uncertain_mask(fg, label).astype(np.uint8) * 255)


def _relative(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` (absolute when they share no root)."""
    try:
        return os.path.relpath(Path(path).resolve(), Path(folder).resolve())
    except ValueError:  # another drive (Windows)
        return str(Path(path).resolve())


def predict_files(files: list[Path], router, out_dir, save_overlay: bool = False,
                  progress: bool = True, keep_labels: bool = False,
                  pseudo: bool = False, save_rois: bool = False,
                  save_geojson: bool = False) -> tuple[RunSummary, dict]:
    """Segment ``files`` with ``router`` into ``out_dir/NAME_label.tiff``.

    ``pseudo``: also ``out_dir/NAME_ignore.png`` (see :func:`uncertain_mask`). Two inputs with
    the same stem would overwrite each other's output: the second is reported as a failure.
    ``save_rois`` / ``save_geojson``: also NAME_rois.zip (Fiji) / NAME.geojson (QuPath), see
    utils/shapes.py.
    Returns the summary and, when ``keep_labels``, a dict name -> label map (for evaluate.py).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary, labels = RunSummary(), {}
    bar = tqdm(files, desc="predict", unit="img", disable=not progress, dynamic_ncols=True)
    seen: dict[str, Path] = {}
    for path in bar:
        t0 = time.time()
        try:
            if path.stem in seen:
                raise InputError(path, f"same name as {seen[path.stem]}: its output would be overwritten")
            seen[path.stem] = path
            raw = read_image(path)
            image = normalize_image(raw)
            label, info = router.segment(raw, image)
            label_path = out_dir / (path.stem + LABEL_SUFFIX)
            write_label(label_path, label)
            if pseudo:
                _write_ignore(out_dir / (path.stem + IGNORE_SUFFIX), info.get("fg"), label)
            if save_overlay:
                write_image(out_dir / f"{path.stem}_overlay.png", overlay_outlines(image, label))
            write_outlines(out_dir, path.stem, label, rois=save_rois, geojson=save_geojson)
        except InputError as exc:
            summary.failures.append(str(exc))
            LOGGER.error("%s", exc)
            continue
        except (ValueError, RuntimeError, MemoryError, OSError) as exc:
            reason = " ".join(str(exc).split())[:200]
            summary.failures.append(f"{path}: {type(exc).__name__}: {reason}")
            LOGGER.error("%s: %s: %s", path, type(exc).__name__, reason)
            continue
        rec = PredictionRecord(name=path.stem, modality=info.get("modality", ""),
                               branch=info.get("branch", ""), n_cells=int(info.get("n_cells", 0)),
                               confidence=round(float(info.get("fg_conf", 0.0)), 4),
                               diameter=round(float(info.get("diameter", 0.0)), 2),
                               seconds=round(time.time() - t0, 3),
                               label_path=_relative(label_path, out_dir),
                               image=_relative(path, out_dir))
        summary.records.append(rec)
        if keep_labels:
            labels[path.stem] = label
        bar.set_postfix(cells=rec.n_cells, branch=rec.branch, refresh=False)
    return summary, labels


def report_failures(summary: RunSummary) -> int:
    """Log the failures at the end of a run; returns the exit status (1 if any failed)."""
    if not summary.failures:
        return 0
    LOGGER.error("%d file(s) failed:", len(summary.failures))
    for line in summary.failures:
        LOGGER.error("  %s", line)
    return 1


def records_frame(records: list[PredictionRecord]):
    import pandas as pd
    return pd.DataFrame([r.__dict__ for r in records])
