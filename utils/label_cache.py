"""The label cache: every label map (compressed), its boxes, image shape and modality in one file.

:class:`DatasetCache` keeps them in ONE ``.npz`` under a cache folder (never next to the data),
keyed by the files' sizes and mtimes, so later runs and epochs never re-read label TIFFs; it
optionally keeps the network images in RAM. Under torch.distributed rank 0 builds the file while
the other ranks wait at a barrier, then read it. :func:`dataset_boxes`: the box sizes of a split
(autoanchor).
"""
from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from utils import io as uio
from utils import modality_cache
from utils.boxes import label_to_boxes
from utils.datasplits import Sample, ignore_path_for
from utils.dist import rank_zero_first
from utils.labels import relabel_consecutive

LOGGER = logging.getLogger(__name__)

# Version of the cache file format: bump it when the stored content changes.
CACHE_VERSION = 1
# Threads reading images and labels while a cache is built (I/O and decoding release the GIL).
CACHE_THREADS = min(8, os.cpu_count() or 1)
# Samples read per batch of the build, bounding the decoded arrays held in memory at once.
CACHE_CHUNK = 4 * CACHE_THREADS


@dataclass
class _Record:
    """What the cache keeps of one sample (label/ignore/image only while it is being written)."""

    shape: tuple = (0, 0)
    modality: str = ""
    label: np.ndarray | None = None
    ignore: np.ndarray | None = None
    boxes: np.ndarray | None = None
    image: np.ndarray | None = None
    error: tuple | None = None     # (path, reason) of an unusable pair


def _write_npy(zf: zipfile.ZipFile, name: str, arr) -> None:
    """One member of an .npz (the format np.savez_compressed writes), streamed into ``zf``."""
    with zf.open(name + ".npy", "w", force_zip64=True) as fh:
        np.lib.format.write_array(fh, np.asarray(arr), allow_pickle=False)


def _compact(label: np.ndarray) -> np.ndarray:
    return label.astype(np.uint16) if label.max(initial=0) <= np.iinfo(np.uint16).max else label


def _read_ignore(path: Path, shape) -> np.ndarray:
    """Ignore mask image -> ``(H, W) bool`` (nonzero in any channel = ignored)."""
    arr = uio.read_image(path)
    if arr.shape[:2] != tuple(shape):
        raise uio.InputError(path, f"ignore mask shape {arr.shape[:2]} does not match image shape "
                                   f"{tuple(shape)}")
    return (arr != 0).any(axis=2)


class DatasetCache:
    """Labels, boxes, shapes and modalities of ``samples`` in ``cache_dir/<sha1>.npz``.

    The sha1 is over the sorted (path, size, mtime) of every image, label and ignore file plus
    CACHE_VERSION: any change of a file gives a new cache, built once (tqdm progress) by reading
    and checking every pair; unusable pairs (unreadable file, shape mismatch) are one-line
    :class:`utils.io.InputError` messages, warned about and skipped. ``cache_images=True`` also
    keeps every network image and label map in RAM (filled here, in the main process, before
    DataLoader workers fork; arrays returned from RAM are shared: do not modify them).
    Accessors take a :class:`Sample`, an image path or a cache index. Samples whose modality is
    None get the classified one. When torch.distributed is initialised, rank 0 loads or builds
    the file first and the other ranks wait at a barrier, then read it (``utils.dist``).
    """

    def __init__(self, samples: list[Sample], cache_dir, cache_images: bool = False):
        unique: dict[str, Sample] = {}
        for s in samples:  # one entry per image; a labelled sample wins over an unlabeled one
            if str(s.image) not in unique or unique[str(s.image)].label is None:
                unique[str(s.image)] = s
        self.samples = [unique[k] for k in sorted(unique)]
        self.index = {str(s.image): i for i, s in enumerate(self.samples)}
        self.cache_images = cache_images
        self.path = Path(cache_dir) / f"{self._key()}.npz"
        self._file, self._pid, self._images, self._labels = None, None, None, None
        with rank_zero_first():  # under DDP the other ranks wait, then read rank 0's file
            if not self._load():
                self._build()
        for i, s in enumerate(self.samples):
            self.modalities[i] = s.modality or self.modalities[i]
        for s in samples:
            s.modality = s.modality or self.modalities[self.index[str(s.image)]] or None
        if cache_images and self._images is None:
            self._fill_images()
        self._report()

    def _key(self) -> str:
        entries = []
        for s in self.samples:
            files = [s.image] if s.label is None else [s.image, s.label, ignore_path_for(s)]
            entries.append(tuple(uio.file_key(f) for f in files))
        h = hashlib.sha1(f"dataset-cache-v{CACHE_VERSION}".encode())
        for e in sorted(entries):
            h.update(repr(e).encode())
        return h.hexdigest()

    def _set_meta(self, shapes, modalities, errors, boxes, has_ignore):
        self.shapes = np.asarray(shapes, np.int64).reshape(-1, 2)
        self.modalities = [str(m) for m in modalities]
        self.errors = [tuple(e) if e and e[0] else None for e in errors]
        self._boxes = [np.asarray(b, np.float32).reshape(-1, 4) for b in boxes]
        self.has_ignore = np.asarray(has_ignore, bool)

    def _load(self) -> bool:
        if not self.path.is_file():
            return False
        try:
            with np.load(self.path, allow_pickle=False) as z:
                if int(z["version"]) != CACHE_VERSION or list(z["paths"]) != list(self.index):
                    LOGGER.warning("%s: label cache of other files, rebuilding", self.path)
                    return False
                counts = z["box_counts"]
                boxes = np.split(z["boxes"], np.cumsum(counts)[:-1]) if len(counts) else []
                errors = zip(z["error_paths"], z["error_reasons"])
                self._set_meta(z["shapes"], z["modalities"], errors, boxes, z["has_ignore"])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            LOGGER.warning("%s: unusable label cache (%s), rebuilding", self.path, exc)
            return False
        LOGGER.info("Label cache %s: %d images", self.path, len(self.samples))
        return True

    def _scan_one(self, sample: Sample) -> _Record:
        try:
            raw = uio.read_image(sample.image)
            rec = _Record(shape=raw.shape[:2], modality=sample.modality or modality_cache.classify_raw(raw),
                          boxes=np.zeros((0, 4), np.float32))
            if sample.label is not None:
                rec.label = relabel_consecutive(uio.read_label(sample.label, rec.shape))
                rec.boxes = label_to_boxes(rec.label)[1]
                ign = ignore_path_for(sample)
                rec.ignore = _read_ignore(ign, rec.shape) if ign.is_file() else None
            rec.image = uio.normalize_image(raw) if self.cache_images else None
            return rec
        except uio.InputError as exc:
            return _Record(boxes=np.zeros((0, 4), np.float32), error=(exc.path, exc.reason))

    def _scan_all(self):
        with ThreadPoolExecutor(CACHE_THREADS) as pool:
            for start in range(0, len(self.samples), CACHE_CHUNK):
                yield from pool.map(self._scan_one, self.samples[start:start + CACHE_CHUNK])

    def _build(self) -> None:
        n = len(self.samples)
        shapes, mods, errors, boxes = np.zeros((n, 2), np.int64), [""] * n, [("", "")] * n, [None] * n
        has_ignore, images = np.zeros(n, bool), ([None] * n if self.cache_images else None)
        labels = [None] * n
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with uio.atomic_write(self.path) as tmp, \
                zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf, \
                tqdm(total=n, desc=f"Caching labels -> {self.path}") as bar:
            for i, rec in enumerate(self._scan_all()):
                shapes[i], mods[i], boxes[i] = rec.shape, rec.modality, rec.boxes
                errors[i] = rec.error or ("", "")
                if rec.label is not None:
                    rec.label = _compact(rec.label)
                    _write_npy(zf, f"label_{i}", rec.label)
                if rec.ignore is not None:
                    _write_npy(zf, f"ignore_{i}", rec.ignore)
                    has_ignore[i] = True
                if images is not None:
                    images[i], labels[i] = rec.image, rec.label
                bar.update()
            counts = np.array([len(b) for b in boxes], np.int64)
            stacked = np.concatenate(boxes) if n else np.zeros((0, 4), np.float32)
            for name, arr in (("version", np.int64(CACHE_VERSION)), ("paths", list(self.index)),
                              ("shapes", shapes), ("modalities", mods), ("box_counts", counts),
                              ("boxes", stacked), ("has_ignore", has_ignore),
                              ("error_paths", [e[0] for e in errors]),
                              ("error_reasons", [e[1] for e in errors])):
                _write_npy(zf, name, arr)
        self._set_meta(shapes, mods, errors, boxes, has_ignore)
        self._images, self._labels = images, (labels if self.cache_images else None)

    def _fill_images(self) -> None:
        """Load every usable network image into RAM (main process, before workers fork)."""
        todo = [i for i in range(len(self.samples)) if self.errors[i] is None]
        self._images, self._labels = [None] * len(self.samples), [None] * len(self.samples)
        for i in todo:
            if self.samples[i].label is not None:
                self._labels[i] = self._npz()[f"label_{i}"]

        def load(i):
            try:
                return uio.load_image(self.samples[i].image)
            except uio.InputError as exc:
                self.errors[i] = (exc.path, exc.reason)
                return None

        with ThreadPoolExecutor(CACHE_THREADS) as pool:
            for i, img in zip(todo, tqdm(pool.map(load, todo), total=len(todo), desc="Caching images")):
                self._images[i] = img
        arrays = [a for a in self._images + self._labels if a is not None]
        LOGGER.info("Cached %d images and labels in RAM (%.2f GB)", len(todo),
                    sum(a.nbytes for a in arrays) / 1e9)

    def _report(self) -> None:
        bad = [e for e in self.errors if e is not None]
        if bad:
            LOGGER.warning("%d of %d image/label pairs are unusable and skipped:",
                           len(bad), len(self.samples))
            for path, reason in bad:
                LOGGER.warning("  %s: %s", path, reason)

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.samples)

    def __contains__(self, item) -> bool:
        key = str(item.image if isinstance(item, Sample) else item)
        return key in self.index

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"] = None  # an open zip is per process
        return state

    def _npz(self):
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = np.load(self.path, allow_pickle=False), os.getpid()
        return self._file

    def index_of(self, item) -> int:
        """Cache index of a Sample / image path / index; InputError if absent."""
        if isinstance(item, (int, np.integer)):
            return int(item)
        key = str(item.image if isinstance(item, Sample) else item)
        if key not in self.index:
            raise uio.InputError(key, "not in the dataset cache")
        return self.index[key]

    def _usable(self, item) -> int:
        i = self.index_of(item)
        if self.errors[i] is not None:
            raise uio.InputError(*self.errors[i])
        return i

    def valid(self, item) -> bool:
        """True when the sample is cached and its files were usable."""
        return item in self and self.errors[self.index_of(item)] is None

    def shape(self, item) -> tuple[int, int]:
        """Native ``(H, W)`` in pixels."""
        return tuple(int(v) for v in self.shapes[self._usable(item)])

    def modality(self, item) -> str:
        return self.modalities[self._usable(item)]

    def boxes(self, item) -> np.ndarray:
        """``(n, 4) float32 xyxy`` pixels of the native label map (empty when unlabeled)."""
        return self._boxes[self._usable(item)]

    def label(self, item) -> np.ndarray | None:
        """Native ``(H, W) int32`` label map, ids 1..n; None for an unlabeled sample."""
        i = self._usable(item)
        if self.samples[i].label is None:
            return None
        if self._labels is not None and self._labels[i] is not None:
            return self._labels[i].astype(np.int32)  # a copy: the RAM cache stays intact
        return self._npz()[f"label_{i}"].astype(np.int32)

    def ignore(self, item) -> np.ndarray | None:
        """Native ``(H, W) bool`` ignore mask (True = not in the loss), None when there is none."""
        i = self._usable(item)
        return self._npz()[f"ignore_{i}"] if self.has_ignore[i] else None

    def image(self, item) -> np.ndarray:
        """Network image ``(H, W, 3) uint8`` (from RAM when cached, else read and normalised)."""
        i = self._usable(item)
        if self._images is not None and self._images[i] is not None:
            return self._images[i]
        return uio.load_image(self.samples[i].image)


def dataset_boxes(samples: list[Sample], cache: DatasetCache) -> np.ndarray:
    """Widths and heights ``(N, 2) float32`` (pixels, native resolution) of all labelled boxes."""
    wh = [cache.boxes(s)[:, 2:] - cache.boxes(s)[:, :2] for s in samples if cache.valid(s)]
    return np.concatenate(wh).astype(np.float32) if wh else np.zeros((0, 2), np.float32)
