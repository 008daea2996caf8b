"""Split resolution: the images of a dataset config's split, with their labels and side files.

- :func:`resolve_split`: a DataConfig split -> ``list[Sample]`` (image, label, modality,
  confidence, source) from dataset folders (images/, labels/NAME_label.tiff), split files
  (:func:`read_split_file`) and predict.py's pseudo-label CSVs.
- :func:`read_meta`, :func:`read_confidence`: the meta.csv / confidence.csv side files.

The fixed real-data split files themselves are written by ``utils.real_splits``; modalities
missing from meta.csv are classified by ``utils.modality_cache``.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

from utils import io as uio
from utils.config import DataConfig
from utils.modality import MODALITIES
from utils.modality_cache import classify_samples
from utils.sampling import source_of

LOGGER = logging.getLogger(__name__)

SPLITS = ("train", "val", "unlabeled", "pseudo")
META_FILE = "meta.csv"                # name,modality[,...] per image, in a dataset folder or root
CONFIDENCE_FILE = "confidence.csv"    # name,confidence per image, in a pseudo-label folder
CONFIDENCE_GLOB = "confidence*.csv"   # in labels/: predict.py's file (confidence_rankN.csv per rank)
# Where to get data, said when a dataset YAML's folder is missing (a newcomer's first training run).
GET_DATA = ("get the NeurIPS 2022 cell segmentation challenge data "
            "(https://neurips22-cellseg.grand-challenge.org, README: Data) into that folder, or "
            "try the pipeline on synthetic data: python -m utils.synthetic --out DIR, then a "
            "dataset YAML with path: DIR, train: [.], val: [.]")


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
    return Path(sample.label).parent / (Path(sample.image).stem + uio.IGNORE_SUFFIX)


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
    uio.warn_names(LOGGER, f"{path}: rows with a modality other than {'/'.join(MODALITIES)} "
                           "(ignored)", bad)
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


def read_split_file(path, root, split: str) -> list[Path]:
    """The images a split file lists: one path a line, relative to ``root``; blank lines and
    ``#`` comments skipped; listed images that do not exist are warned about and skipped.

    ``split`` names the split in the messages; a missing file is an :class:`utils.io.InputError`.
    """
    path = Path(path)
    if not path.is_file():
        raise uio.InputError(path, f"split file of {split} not found")
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    listed = [Path(root) / ln for ln in lines if ln and not ln.startswith("#")]
    missing = [str(p) for p in listed if not p.is_file()]
    uio.warn_names(LOGGER, f"{split}: {path} lists missing images (skipped)", missing)
    return [p for p in listed if p.is_file()]


def _entry_images(cfg: DataConfig, split: str, entry: str) -> list[Path]:
    """Images of one split entry: a ``.txt`` list (relative to the YAML folder) or a folder."""
    if entry.lower().endswith(".txt"):
        txt = Path(entry).expanduser()
        return read_split_file(txt if txt.is_absolute() else Path(cfg.yaml_dir) / txt, cfg.root, split)
    folder = cfg.root / entry
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
        uio.warn_names(LOGGER, f"{split}: labels without an image in {labels_dir} (ignored)", orphans)
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
    if not cfg.root.is_dir():
        raise uio.InputError(cfg.root, f"dataset folder missing (the path: of a dataset YAML in "
                                       f"{cfg.yaml_dir}); {GET_DATA}")
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
    uio.warn_names(LOGGER, f"{split}: images without labels/NAME{uio.LABEL_SUFFIX} (skipped)",
                   unpaired)
    uio.warn_names(LOGGER, f"{split}: missing images (skipped)", missing)
    if cfg.modality is not None and samples:
        classify_samples(samples, cache_dir)
        samples = [s for s in samples if s.modality == cfg.modality]
    if not samples:
        where = f" with modality {cfg.modality}" if cfg.modality else ""
        raise uio.InputError(cfg.root, f"split {split!r} has no usable images{where} "
                                       f"(entries: {', '.join(getattr(cfg, split)) or 'none'})")
    LOGGER.info("%s: %d images", split, len(samples))
    return samples
