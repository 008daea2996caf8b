"""Datasets of the NeurIPS 2022 layout: split resolution, the label cache, the training dataset,
its collate function and data loader.

- :func:`resolve_split`: a DataConfig split -> ``list[Sample]`` (image, label, modality, confidence).
- :class:`DatasetCache`: every label map (compressed), its boxes, the image shape and modality in
  ONE ``.npz`` file under a cache folder (never next to the data), keyed by the files' sizes and
  mtimes, so later runs and epochs never re-read label TIFFs; optional RAM cache of the images.
- :class:`CellDataset`: training samples (augmented at native scale, ``utils.augment``) as dicts
  of tensors; :func:`collate_fn`; :func:`build_dataloader` (DDP-aware, reproducible).
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import random
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from utils import io as uio
from utils.augment import Tile, augment_tiles, eval_transform, relabel_consecutive
from utils.boxes import label_to_boxes
from utils.config import DataConfig, Hyp
from utils.modality import MODALITIES, classify_modality
from utils.sampling import ShareSampler, source_of
from utils.targets import height_map

LOGGER = logging.getLogger(__name__)

SPLITS = ("train", "val", "unlabeled", "pseudo")
META_FILE = "meta.csv"                # name,modality[,...] per image, in a dataset folder or root
CONFIDENCE_FILE = "confidence.csv"    # name,confidence per image, in a pseudo-label folder
CONFIDENCE_GLOB = "confidence*.csv"   # in labels/: predict.py's file (confidence_rankN.csv per rank)
IGNORE_SUFFIX = "_ignore.png"         # labels/NAME_ignore.png: nonzero = pixel not in the loss
MODALITY_CACHE_FILE = "modalities.json"
# File names quoted in a warning about unpaired / unusable files (the count is always given).
LOG_FIRST_NAMES = 5
# Version of the cache file format: bump it when the stored content changes.
CACHE_VERSION = 1
# Threads reading images and labels while a cache is built (I/O and decoding release the GIL).
CACHE_THREADS = min(8, os.cpu_count() or 1)
# Samples read per batch of the build, bounding the decoded arrays held in memory at once.
CACHE_CHUNK = 4 * CACHE_THREADS
# A sample that fails to load during training is replaced by another one, at most this many times.
MAX_LOAD_RETRIES = 10


@dataclass
class Sample:
    """One image of a split; ``label`` None for unlabeled images; ``modality`` None = unknown yet
    (filled by :class:`DatasetCache`); ``confidence`` in [0, 1] weights a pseudo-labelled sample."""

    image: Path
    label: Path | None
    modality: str | None
    confidence: float = 1.0
    source: str = ""             # the DataConfig source it matches (utils.sampling), "" = none


def ignore_path_for(sample: Sample) -> Path | None:
    """labels/NAME_ignore.png beside the sample's label (None for unlabeled samples)."""
    if sample.label is None:
        return None
    return Path(sample.label).parent / (Path(sample.image).stem + IGNORE_SUFFIX)


def _warn_names(what: str, names: list[str]) -> None:
    if names:
        first = ", ".join(names[:LOG_FIRST_NAMES]) + (", ..." if len(names) > LOG_FIRST_NAMES else "")
        LOGGER.warning("%s: %d (%s)", what, len(names), first)


# ----------------------------------------------------------------------------- CSV side files
def _stem(name: str) -> str:
    p = Path(name.strip())
    return p.stem if p.suffix.lower() in uio.IMAGE_SUFFIXES else p.name


def _read_csv_column(path: Path, column: str) -> dict[str, str]:
    """``{image stem: value of column}`` of a CSV with a ``name`` column."""
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            fields = reader.fieldnames or []
            if "name" not in fields or column not in fields:
                raise uio.InputError(path, f"expected the columns name,{column}; got {fields}")
            # predict.py's CSVs also list the images that failed (status other than ok)
            return {_stem(row["name"]): (row[column] or "").strip() for row in reader
                    if row.get("name") and (row.get("status") or "ok").strip() == "ok"}
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise uio.InputError(path, f"cannot read CSV ({type(exc).__name__}: {exc})") from None


def read_meta(path) -> dict[str, str]:
    """meta.csv -> ``{image stem: "bf" | "fl" | "gs"}``; rows with another modality are warned about."""
    path = Path(path)
    if not path.is_file():
        raise uio.InputError(path, "no such file")
    table = _read_csv_column(path, "modality")
    bad = sorted(k for k, v in table.items() if v not in MODALITIES)
    _warn_names(f"{path}: rows with a modality other than {'/'.join(MODALITIES)} (ignored)", bad)
    return {k: v for k, v in table.items() if v in MODALITIES}


def read_confidence(path) -> dict[str, float]:
    """confidence.csv -> ``{image stem: confidence in [0, 1]}``."""
    out = {}
    for name, value in _read_csv_column(Path(path), "confidence").items():
        try:
            conf = float(value)
        except ValueError:
            raise uio.InputError(path, f"row {name}: confidence {value!r} is not a number") from None
        if not 0.0 <= conf <= 1.0:
            raise uio.InputError(path, f"row {name}: confidence {conf} outside [0, 1]")
        out[name] = conf
    return out


# ----------------------------------------------------------------------------- split resolution
def _dataset_folder(image: Path) -> Path:
    """The folder holding images/ (and labels/, meta.csv, confidence.csv) of an image."""
    return image.parent.parent if image.parent.name == "images" else image.parent


def _entry_images(cfg: DataConfig, split: str, entry: str) -> list[Path]:
    """Images of one split entry: a ``.txt`` list (relative to the YAML folder) or a folder."""
    root = cfg.root
    if entry.lower().endswith(".txt"):
        txt = Path(entry).expanduser()
        txt = txt if txt.is_absolute() else Path(cfg.yaml_dir) / txt
        if not txt.is_file():
            raise uio.InputError(txt, f"split file of {split} not found")
        lines = [ln.strip() for ln in txt.read_text().splitlines()]
        listed = [root / ln for ln in lines if ln and not ln.startswith("#")]
        missing = [str(p) for p in listed if not p.is_file()]
        _warn_names(f"{split}: {txt} lists missing images (skipped)", missing)
        return [p for p in listed if p.is_file()]
    folder = root / entry
    if (folder / "images").is_dir():
        images_dir = folder / "images"
    elif folder.name == "images" and folder.is_dir():
        images_dir = folder
    else:
        raise uio.InputError(folder, f"{split} entry is neither a .txt split file nor a folder "
                                     "with images/")
    images = uio.list_images(images_dir)
    if split != "unlabeled":
        labels_dir = images_dir.parent / "labels"
        stems = {p.stem for p in images}
        orphans = sorted(p.name for p in labels_dir.glob("*" + uio.LABEL_SUFFIX)
                         if p.name[:-len(uio.LABEL_SUFFIX)] not in stems) if labels_dir.is_dir() else []
        _warn_names(f"{split}: labels without an image in {labels_dir} (ignored)", orphans)
    return images


class _SideFiles:
    """meta.csv / confidence.csv tables, each read once."""

    def __init__(self, cfg: DataConfig):
        self.explicit = read_meta(cfg.root / cfg.meta) if cfg.meta else None
        root_meta = cfg.root / META_FILE
        # a folder's own meta.csv overrides the root's (the root's is read once, for both)
        use_root = self.explicit is None and root_meta.is_file()
        self.metas: dict[Path, dict] = {cfg.root: read_meta(root_meta) if use_root else {}}
        self.root_meta = self.metas[cfg.root]
        self.confs: dict[Path, dict] = {}

    def modality(self, image: Path) -> str | None:
        if self.explicit is not None:
            return self.explicit.get(image.stem)
        folder = _dataset_folder(image)
        if folder not in self.metas:
            f = folder / META_FILE
            self.metas[folder] = read_meta(f) if f.is_file() else {}
        return self.metas[folder].get(image.stem, self.root_meta.get(image.stem))

    def confidence(self, image: Path) -> float:
        """From the dataset folder's confidence.csv, else labels/confidence.csv (written by
        ``predict.py -o FOLDER/labels --pseudo``; under torchrun confidence_rankN.csv)."""
        folder = _dataset_folder(image)
        if folder not in self.confs:
            self.confs[folder] = {}
            for f in [folder / CONFIDENCE_FILE, *sorted((folder / "labels").glob(CONFIDENCE_GLOB))]:
                if f.is_file():
                    self.confs[folder] = {**read_confidence(f), **self.confs[folder]}
        return self.confs[folder].get(image.stem, 1.0)


def _pseudo_csv_pairs(cfg: DataConfig, entry: str) -> list[tuple[Path, Path, float]]:
    """``(image, label, confidence)`` of a pseudo entry naming a predict.py --pseudo CSV.

    The CSV (relative to the YAML's folder, like split files) has the columns name, image
    (absolute or relative to the CSV's folder) and confidence; labels (and ignore masks) lie
    beside it as NAME_label.tiff (NAME_ignore.png).
    """
    path = Path(entry).expanduser()
    path = path if path.is_absolute() else Path(cfg.yaml_dir) / path
    if not path.is_file():
        raise uio.InputError(path, "pseudo-label CSV not found (run predict.py --pseudo first)")
    images, confs = _read_csv_column(path, "image"), read_confidence(path)
    out = []
    for name, rel in images.items():
        if not rel:
            raise uio.InputError(path, f"row {name}: empty image path")
        image = Path(rel).expanduser()
        image = image if image.is_absolute() else path.parent / image
        out.append((image, uio.label_path_for(image, path.parent), confs.get(name, 1.0)))
    return out


def _entry_pairs(cfg: DataConfig, split: str, entry: str, side: _SideFiles):
    """``(image, label or None, confidence)`` of one split entry."""
    if split == "pseudo" and entry.lower().endswith(".csv"):
        return _pseudo_csv_pairs(cfg, entry)
    labelled = split != "unlabeled"
    return [(image, uio.label_path_for(image, _dataset_folder(image) / "labels") if labelled else None,
             side.confidence(image) if split == "pseudo" else 1.0)
            for image in _entry_images(cfg, split, entry)]


def resolve_split(cfg: DataConfig, split: str, cache_dir=None) -> list[Sample]:
    """The samples of ``split`` ("train", "val", "unlabeled" or "pseudo") of a dataset config.

    Images without a label (labelled splits) are skipped with a warning, like labels without an
    image; an empty split raises :class:`utils.io.InputError`. Modalities come from meta.csv
    (``cfg.meta``, else the root's and the image folder's); with ``cfg.modality`` set, images of
    unknown modality are classified (memoised in ``cache_dir`` when given) and filtered.

    A ``pseudo`` entry is a dataset folder whose labels/ holds pseudo labels (confidence.csv in
    the folder or in labels/, NAME_ignore.png beside the labels), or the path of the
    confidence.csv that ``predict.py --pseudo`` wrote (relative to the YAML's folder): its
    ``image`` column names the images, wherever they are, and the labels lie beside it.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    side = _SideFiles(cfg)
    samples, seen, unpaired, missing = [], set(), [], []
    for entry in getattr(cfg, split):
        for image, label, conf in _entry_pairs(cfg, split, entry, side):
            key = str(image.resolve())
            if key in seen:
                continue
            seen.add(key)
            if label is not None and not label.is_file():
                unpaired.append(image.name)
                continue
            if not image.is_file():
                missing.append(str(image))  # a pseudo CSV naming a vanished image
                continue
            samples.append(Sample(image, label, side.modality(image), conf, source_of(cfg, image)))
    _warn_names(f"{split}: images without labels/NAME{uio.LABEL_SUFFIX} (skipped)", unpaired)
    _warn_names(f"{split}: missing images (skipped)", missing)
    if cfg.modality is not None and samples:
        classify_samples(samples, cache_dir)
        samples = [s for s in samples if s.modality == cfg.modality]
    if not samples:
        where = f" with modality {cfg.modality}" if cfg.modality else ""
        raise uio.InputError(cfg.root, f"split {split!r} has no usable images{where} "
                                       f"(entries: {', '.join(getattr(cfg, split)) or 'none'})")
    LOGGER.info("%s: %d images", split, len(samples))
    return samples


# ----------------------------------------------------------------------------- modality
_MODALITY_MEMO: dict[str, str] = {}


def _file_key(path) -> str:
    try:
        st = os.stat(path)
        return f"{path}|{st.st_size}|{st.st_mtime_ns}"
    except OSError:
        return f"{path}|-1|-1"


def _classify_raw(raw: np.ndarray) -> str:
    """Modality of a raw image (a seam for tests)."""
    return classify_modality(raw)


def classify_samples(samples: list[Sample], cache_dir=None) -> None:
    """Fill ``sample.modality`` where None with ``classify_modality`` of the raw image, in place.

    Results are memoised per (path, size, mtime) in this process and, when ``cache_dir`` is
    given, in ``cache_dir/modalities.json``. Unreadable images are warned about and stay None.
    """
    todo = [s for s in samples if s.modality is None]
    if not todo:
        return
    store = Path(cache_dir) / MODALITY_CACHE_FILE if cache_dir is not None else None
    if store is not None and store.is_file():
        try:
            _MODALITY_MEMO.update(json.loads(store.read_text()))
        except (OSError, ValueError):
            LOGGER.warning("%s: unreadable modality cache, recomputing", store)
    bad, new = [], False
    for s in tqdm(todo, desc="Classifying modalities", disable=len(todo) < CACHE_CHUNK):
        key = _file_key(s.image)
        if key not in _MODALITY_MEMO:
            try:
                _MODALITY_MEMO[key], new = _classify_raw(uio.read_image(s.image)), True
            except uio.InputError as exc:
                bad.append(str(exc))
                continue
        s.modality = _MODALITY_MEMO[key]
    _warn_names("images whose modality could not be computed", bad)
    if store is not None and new:
        with uio.atomic_write(store) as tmp:
            tmp.write_text(json.dumps(_MODALITY_MEMO))


# ----------------------------------------------------------------------------- label cache
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
    None get the classified one.
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
            entries.append(tuple(_file_key(f) for f in files))
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
            rec = _Record(shape=raw.shape[:2], modality=sample.modality or _classify_raw(raw),
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


# ----------------------------------------------------------------------------- dataset
def default_targets(label: np.ndarray) -> dict[str, np.ndarray]:
    """Watershed-branch targets of a label map ``(S, S)``: 'fg' ``float32 {0, 1}`` and 'height'
    ``float32`` (utils.targets.height_map)."""
    return {"fg": (label > 0).astype(np.float32), "height": height_map(label)}


_ITEM_KEYS = ("img", "label", "boxes", "ignore", "weight", "modality", "path")


class CellDataset(Dataset):
    """``S x S`` training samples (S = ``img_size``) as dicts:

    'img' ``uint8 (3, S, S)`` RGB; 'label' ``int32 (S, S)`` ids 1..n after augmentation;
    'boxes' ``float32 (n, 4)`` xyxy pixels = label_to_boxes(label); 'ignore' ``bool (S, S)``
    (True = not in the loss: labels/NAME_ignore.png, or all of an unlabeled image); 'weight'
    float (the sample's confidence); 'modality'; 'path'; plus each key of ``target_fn(label)``
    as a tensor. ``augment=False``: top-left crop / padding at native scale, deterministic.
    An index may be ``(index, seed)`` (see :func:`build_dataloader`): the augmentation then
    depends on the seed only; a bare index draws its seed from ``np.random``.
    """

    def __init__(self, samples: list[Sample], img_size: int, hyp: Hyp | None = None,
                 augment: bool = False, cache: DatasetCache | None = None, target_fn=default_targets,
                 shares: dict[str, float] | None = None, epoch_size: int | None = None):
        if cache is None:
            raise TypeError("CellDataset needs a DatasetCache (cache=...)")
        self.cache, self.img_size, self.augment = cache, int(img_size), augment
        self.hyp, self.target_fn = hyp or Hyp(), target_fn
        self.samples = [s for s in samples if cache.valid(s)]
        if len(self.samples) < len(samples):
            LOGGER.warning("%d of %d samples skipped (unusable files or not cached)",
                           len(samples) - len(self.samples), len(samples))
        if not self.samples:
            raise ValueError("CellDataset: no usable samples")
        self.modalities = [cache.modality(s) for s in self.samples]
        # training draws (build_dataloader): by source share when given, else uniformly
        self.shares, self.epoch_size = shares or None, epoch_size
        # mosaic partners: the same source when sources are named, else the same modality
        self.partner_keys = [s.source or m for s, m in zip(self.samples, self.modalities)]
        keys = np.array(self.partner_keys)
        self.groups = {k: np.flatnonzero(keys == k) for k in set(self.partner_keys)}

    def __len__(self) -> int:
        return len(self.samples)

    def _tile(self, i: int) -> Tile:
        s = self.samples[i]
        img, label, ignore = self.cache.image(s), None, None
        if s.label is not None:
            label, ignore = self.cache.label(s), self.cache.ignore(s)
        if label is None:  # unlabeled: nothing to learn from, everything ignored
            label, ignore = np.zeros(img.shape[:2], np.int32), np.ones(img.shape[:2], bool)
        return Tile(img, label, ignore, self.modalities[i])

    def _transform(self, i: int, rng: np.random.Generator) -> Tile:
        tile = self._tile(i)
        if not self.augment:
            return eval_transform(tile, self.img_size)
        tiles = [tile]
        if rng.random() < self.hyp.mosaic:  # partners of the same source/modality: a plausible slide
            tiles += [self._tile(int(j)) for j in rng.choice(self.groups[self.partner_keys[i]], 3)]
        return augment_tiles(tiles, self.img_size, self.hyp, rng)

    def __getitem__(self, item) -> dict:
        index, seed = item if isinstance(item, tuple) else (item, None)
        seed = int(np.random.randint(0, 2**63 - 1, dtype=np.int64)) if seed is None else int(seed)
        rng = np.random.default_rng(seed)
        for _ in range(MAX_LOAD_RETRIES):
            try:
                return self._item(self._transform(index, rng), index)
            except uio.InputError as exc:  # a file changed or vanished since the cache was built
                LOGGER.warning("skipping a sample: %s", exc)
                index = int(rng.integers(len(self)))
        raise RuntimeError(f"{MAX_LOAD_RETRIES} samples in a row could not be loaded")

    def _item(self, tile: Tile, index: int) -> dict:
        s = self.samples[index]
        label = tile.label
        ignore = tile.ignore if tile.ignore is not None else np.zeros(label.shape, bool)
        item = {"img": torch.from_numpy(np.ascontiguousarray(tile.img.transpose(2, 0, 1))),
                "label": torch.from_numpy(label),
                "boxes": torch.from_numpy(label_to_boxes(label)[1]),
                "ignore": torch.from_numpy(np.ascontiguousarray(ignore)),
                "weight": float(s.confidence), "modality": tile.modality, "path": str(s.image)}
        for key, value in self.target_fn(label).items():
            if key in _ITEM_KEYS:
                raise KeyError(f"target_fn returned the reserved key {key!r}")
            item[key] = torch.as_tensor(value)
        return item


def collate_fn(batch: list[dict]) -> dict:
    """Items of :class:`CellDataset` -> a batch: tensors stacked to ``(B, ...)``; 'weight'
    ``float32 (B,)``; 'targets' ``float32 (M, 5)`` [batch index, x1, y1, x2, y2] pixels (in place
    of 'boxes'); other values (modality, path) as lists."""
    out = {}
    for key in batch[0]:
        values = [b[key] for b in batch]
        if key == "boxes":
            rows = [torch.cat([torch.full((len(v), 1), float(i)), v.float()], 1)
                    for i, v in enumerate(values)]
            out["targets"] = torch.cat(rows) if rows else torch.zeros((0, 5))
        elif torch.is_tensor(values[0]):
            out[key] = torch.stack(values)
        elif isinstance(values[0], (int, float)):
            out[key] = torch.tensor(values, dtype=torch.float32)
        else:
            out[key] = list(values)
    return out


# ----------------------------------------------------------------------------- loader
class SeededSampler(Sampler):
    """Wraps a sampler to yield ``(index, seed)``: each item's augmentation seed is drawn from
    ``generator`` in the main process, so augmentation depends on the generator's seed only --
    not on the number of workers, nor on persistent workers' state (exact resume)."""

    def __init__(self, sampler: Sampler, generator: torch.Generator):
        self.sampler, self.generator = sampler, generator

    def __iter__(self):
        indices = list(self.sampler)
        seeds = torch.randint(0, 2**62, (len(indices),), generator=self.generator).tolist()
        return iter(zip(indices, seeds))

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: seed numpy and random from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    cv2.setNumThreads(0)  # workers are the parallelism; OpenCV threads would oversubscribe cores


def max_workers(workers: int, world_size: int = 1) -> int:
    """``workers`` capped at ``cpu_count // world_size`` (at least 0)."""
    return max(0, min(workers, (os.cpu_count() or 1) // max(world_size, 1)))


def build_dataloader(dataset: Dataset, batch_size: int, workers: int, shuffle: bool, rank: int = -1,
                     world_size: int = 1, seed: int = 0, collate_fn=collate_fn):
    """``(DataLoader, DistributedSampler or None)`` for ``dataset``.

    world_size > 1: a DistributedSampler (seeded with ``seed``, drop_last when shuffling, i.e.
    training) -- call its ``set_epoch(epoch)`` every epoch. Shuffle order and per-item
    augmentation seeds come from ``loader.sampler.generator`` (seeded ``seed + rank``; reseed it
    per epoch for exact resume). It is not the DataLoader's own generator: the DataLoader draws
    worker base seeds from that one once per iterator, i.e. once per run with persistent workers
    but once per epoch without, which would shift the sample seeds of a resumed run.
    A dataset with ``shares`` (CellDataset from a YAML with ``sources``) is drawn by
    :class:`utils.sampling.ShareSampler` when shuffling (returned in the sampler slot: call its
    ``set_epoch`` too). pin_memory when CUDA is available; persistent workers when workers > 0. ``workers`` is capped
    at this rank's share of the CPU cores (YOLOv5's rule): more workers than cores only cost RAM.
    """
    workers = max_workers(workers, world_size)
    generator = torch.Generator()
    generator.manual_seed(seed + max(rank, 0))
    dist_sampler = None
    shares = getattr(dataset, "shares", None)
    if shuffle and shares:  # by source share: the same draw on every rank, each its own slice
        base = dist_sampler = ShareSampler([s.source for s in dataset.samples], shares,
                                           dataset.epoch_size, seed, rank, world_size)
        LOGGER.info("epoch of %d samples by source: %s", base.total, base.describe())
    elif world_size > 1:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        base = dist_sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                                 shuffle=shuffle, seed=seed, drop_last=shuffle)
    else:
        base = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=SeededSampler(base, generator),
                        num_workers=workers, collate_fn=collate_fn, worker_init_fn=seed_worker,
                        pin_memory=torch.cuda.is_available(),
                        persistent_workers=workers > 0)
    return loader, dist_sampler
