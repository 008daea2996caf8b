"""The folder-prediction loop shared by predict.py and evaluate.py.

Reads each image (all formats of utils/io), routes and segments it, writes NAME_label.tiff
atomically (and an overlay PNG on request), records per-image information, and goes on when a
file fails: failures are collected with a one-line reason each.

Pseudo-label mode (``pseudo=True``, predict.py --pseudo) also writes NAME_ignore.png: the pixels
the model is unsure about (:func:`uncertain_mask`), which train_weakly.py leaves out of the loss
instead of learning them as background.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from tqdm import tqdm

from utils.io import (IGNORE_SUFFIX, IMAGE_SUFFIXES, InputError, LABEL_SUFFIX, atomic_write,
                      failure_reason, find_images, network_input, read_image,
                      remove_stale_temporaries, write_image, write_label)
from utils.plots import overlay_outlines
from utils.shapes import write_outlines

LOGGER = logging.getLogger(__name__)
# Temporary files older than this process are a killed run's debris (removed on start).
_STARTED = time.time()

# Pseudo-label ignore band: a background pixel whose foreground probability lies strictly between
# these is uncertain (a symmetric band around the 0.5 decision threshold; this project's choice).
PSEUDO_IGNORE_LOW = 0.3
PSEUDO_IGNORE_HIGH = 0.7


@dataclass
class PredictionRecord:
    """What happened to one image (a row of predictions.csv / confidence.csv)."""

    name: str                     # the image's stem (with --recursive: SUBFOLDER/STEM)
    modality: str = ""
    branch: str = ""
    n_cells: int = 0
    confidence: float = 0.0       # mean foreground probability over pixels above 0.5
    diameter: float = 0.0         # median cell diameter, pixels (utils.inference.median_diameter)
    scale: float = 1.0            # resize factor of the pass kept (--scale or the size rule)
    seconds: float = 0.0
    label_path: str = ""          # relative to the output folder (NAME_label.tiff)
    image: str = ""               # the source image, relative to the output folder when possible
    status: str = "ok"            # "ok" or "failed"
    error: str = ""               # the one-line reason of a failure


RECORD_FIELDS = [f.name for f in fields(PredictionRecord)]


@dataclass
class RunSummary:
    records: list[PredictionRecord] = field(default_factory=list)   # the images segmented (ok)
    failures: list[str] = field(default_factory=list)   # one line each: "path: reason"
    skipped: int = 0                                    # already done (skip_existing)


def _record_from_row(row: dict) -> PredictionRecord:
    """A CSV row (strings) -> record; raises ValueError on a malformed row."""
    values = {}
    for f in fields(PredictionRecord):
        text = row.get(f.name)
        if text is None:
            continue
        values[f.name] = type(f.default)(text) if f.name != "name" else text
    return PredictionRecord(**values)


class RecordLog:
    """The CSV of the run's records: each row is appended and flushed as its image finishes, so a
    killed run keeps every finished record.

    ``resume``: the complete rows of an earlier run whose status is ok and whose label file still
    exists are kept (:attr:`done`, name -> record) and the rest dropped (a half-written last row,
    failures, which are retried); otherwise the file starts empty.
    """

    def __init__(self, path, resume: bool = False):
        self.path = Path(path)
        self.done: dict[str, PredictionRecord] = {}
        if resume and self.path.is_file():
            self.done = {r.name: r for r in self._read()  # label_path: relative to the CSV's folder
                         if r.status == "ok" and (self.path.parent / r.label_path).is_file()}
        with atomic_write(self.path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, RECORD_FIELDS)
            writer.writeheader()
            writer.writerows(r.__dict__ for r in self.done.values())
        self._fh = open(self.path, "a", newline="")
        self._writer = csv.DictWriter(self._fh, RECORD_FIELDS)

    def _read(self) -> list[PredictionRecord]:
        text = self.path.read_text(errors="replace")
        if not text.endswith("\n"):  # killed in the middle of a row: drop it
            text = text[:text.rfind("\n") + 1]
        out = []
        for row in csv.DictReader(io.StringIO(text)):
            try:
                out.append(_record_from_row(row))
            except (TypeError, ValueError):
                LOGGER.warning("%s: malformed row for %s dropped", self.path, row.get("name"))
        return out

    def append(self, rec: PredictionRecord) -> None:
        self._writer.writerow(rec.__dict__)
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def input_files(source, recursive: bool = False, name_filter: str = "") -> list[Path]:
    """Images of predict.py's ``-i``: the ``unlabeled`` split of a dataset YAML, else
    :func:`utils.io.find_images` (an image, a folder, a glob pattern, a list file);
    ``name_filter``: only the images whose stem ends with it. An unusable source is an
    InputError (one line)."""
    if Path(str(source)).suffix.lower() in (".yaml", ".yml"):
        from utils.config import ConfigError, load_data_config
        from utils.datasplits import resolve_split
        if recursive:
            raise InputError(source, "--recursive needs a folder as input")
        try:
            files = [s.image for s in resolve_split(load_data_config(source), "unlabeled")]
        except ConfigError as exc:
            raise InputError(source, str(exc)) from None
        return [f for f in files if f.stem.endswith(name_filter)]
    return find_images(source, recursive, name_filter)


def output_name(path: Path, root: Path | None = None) -> str:
    """The name of an image's outputs (OUT/NAME_label.tiff...): its stem, or with ``root`` (the
    folder of a --recursive input) its path under ``root`` without the suffix (SUB/STEM), so
    that the outputs mirror the input's subfolders."""
    if root is None:
        return path.stem
    return path.relative_to(root).with_suffix("").as_posix()


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
                  progress: bool = True, keep_labels: bool = False, pseudo: bool = False,
                  records_csv=None, skip_existing: bool = False, save_rois: bool = False,
                  save_geojson: bool = False, channels: tuple[int, int] | None = None,
                  root=None) -> tuple[RunSummary, dict]:
    """Segment ``files`` with ``router`` (a :class:`utils.routing.Router`: ``route_and_segment``)
    into ``out_dir/NAME_label.tiff``.

    ``channels``: (chan, chan2) picked from each raw image before normalisation
    (utils.io.network_input; an image without that channel fails alone). ``root``: the outputs
    mirror the files' subfolders under this folder (:func:`output_name`; predict.py --recursive).

    ``pseudo``: also ``out_dir/NAME_ignore.png`` (see :func:`uncertain_mask`). Two inputs with
    the same stem would overwrite each other's output: the second is reported as a failure. Any
    exception while handling one file fails that file only.
    ``records_csv``: a :class:`RecordLog` path, one row per file (failures included) written as
    each file finishes; with ``skip_existing``, files it already lists as done are skipped.
    ``save_rois`` / ``save_geojson``: also NAME_rois.zip (Fiji) / NAME.geojson (QuPath), see
    utils/shapes.py.
    Returns the summary and, when ``keep_labels``, a dict name -> label map (for evaluate.py);
    ``progress`` False: no progress bar.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir, _STARTED)
    log = RecordLog(records_csv, resume=skip_existing) if records_csv else None
    summary, labels = RunSummary(), {}
    bar = tqdm(files, desc="predict", unit="img", disable=not progress, dynamic_ncols=True)
    seen: dict[str, Path] = {}
    outputs = Outputs(save_overlay, pseudo, save_rois, save_geojson, channels,
                      None if root is None else Path(root))
    try:
        for path in bar:
            rec = _predict_one(path, router, out_dir, seen, outputs, labels, keep_labels,
                               log.done if log and skip_existing else {})
            if rec is None:
                summary.skipped += 1
                continue
            if log:
                log.append(rec)
            if rec.status == "ok":
                summary.records.append(rec)
                bar.set_postfix(cells=rec.n_cells, branch=rec.branch, refresh=False)
            else:
                summary.failures.append(f"{path}: {rec.error}")
    finally:
        if log:
            log.close()
    return summary, labels


@dataclass(frozen=True)
class Outputs:
    """What predict_files writes beside each NAME_label.tiff."""

    overlay: bool = False    # NAME_overlay.png
    pseudo: bool = False     # NAME_ignore.png (pseudo-label mode)
    rois: bool = False       # NAME_rois.zip (ImageJ / Fiji)
    geojson: bool = False    # NAME.geojson (QuPath)
    channels: tuple[int, int] | None = None   # (chan, chan2) of utils.io.select_channels
    root: Path | None = None  # outputs mirror the subfolders under this folder (output_name)


def _predict_one(path: Path, router, out_dir: Path, seen: dict, outputs: Outputs,
                 labels: dict, keep_labels: bool, done: dict) -> PredictionRecord | None:
    """One file -> its record (status failed with the reason on any exception); None = done before."""
    t0 = time.time()
    image_rel = _relative(path, out_dir)
    name = path.stem
    try:
        name = output_name(path, outputs.root)
        if name in seen:
            raise InputError(path, f"same name as {seen[name]}: its output would be overwritten")
        seen[name] = path
        if name in done and done[name].image == image_rel:
            return None
        raw = read_image(path)
        seg = router.route_and_segment(*network_input(raw, outputs.channels, path))
        label_path = out_dir / (name + LABEL_SUFFIX)
        write_label(label_path, seg.label)
        if outputs.pseudo:
            _write_ignore(out_dir / (name + IGNORE_SUFFIX), seg.fg, seg.label)
        if outputs.overlay:  # on the pixels as read, whatever channels the network saw
            write_image(out_dir / f"{name}_overlay.png", overlay_outlines(raw, seg.label))
        write_outlines(out_dir, name, seg.label, rois=outputs.rois, geojson=outputs.geojson)
    except Exception as exc:  # noqa: BLE001 - whatever one file raises fails that file only
        reason = failure_reason(exc)
        LOGGER.debug("failed on %s", path, exc_info=True)
        LOGGER.error("%s: %s", path, reason)
        return PredictionRecord(name=name, image=image_rel, status="failed", error=reason,
                                seconds=round(time.time() - t0, 3))
    if keep_labels:
        labels[name] = seg.label
    return PredictionRecord(name=name, modality=seg.modality, branch=seg.branch,
                            n_cells=seg.n_cells, confidence=round(seg.fg_conf, 4),
                            diameter=round(seg.diameter, 2), scale=round(seg.scale, 4),
                            seconds=round(time.time() - t0, 3),
                            label_path=_relative(label_path, out_dir),
                            image=image_rel)


def empty_input_status(source, allow_empty: bool) -> int:
    """An input without any image: warned; exit status 0 when ``allow_empty``, else 2."""
    LOGGER.warning("%s: no image to segment (looked for %s)%s", source, " ".join(IMAGE_SUFFIXES),
                   "" if allow_empty else "; pass --allow-empty if this is expected")
    return 0 if allow_empty else 2


def report_failures(summary: RunSummary) -> int:
    """Log the failures at the end of a run; returns the exit status (1 if any failed)."""
    if not summary.failures:
        return 0
    LOGGER.error("%d file(s) failed:", len(summary.failures))
    for line in summary.failures:
        LOGGER.error("  %s", line)
    return 1

