"""A user's labelled images, in the challenge layout or Cellpose's, paired image by image.

Label files of an image ``NAME.ext``, looked for in this order in the labels folder (which may be
the images folder itself, as Cellpose keeps them):

- ``NAME_label.tiff`` / ``NAME_label.tif``: the NeurIPS 2022 challenge layout;
- ``NAME_masks.tif(f)`` / ``NAME_masks.png`` / ``NAME_cp_masks.png``: Cellpose's mask images;
- ``NAME_seg.npy``: the Cellpose GUI's file (its ``masks`` entry), read with a restricted
  unpickler that builds numpy arrays and plain Python values only, so the file runs no code.

Label maps are ``(H, W) int32``, 0 = background.
"""
from __future__ import annotations

import io as _io
import pickle
from pathlib import Path

import numpy as np

from utils.io import IMAGE_SUFFIXES, InputError, list_images, read_image, read_label

# Suffixes (after the image's stem) of a label file, in the order they are looked for.
LABEL_SUFFIXES = ("_label.tiff", "_label.tif", "_masks.tif", "_masks.tiff", "_masks.png",
                  "_cp_masks.png", "_cp_masks.tif", "_seg.npy")
# Stems ending so are label or output files of Cellpose / this project, never images to train on.
NON_IMAGE_STEMS = ("_label", "_masks", "_cp_masks", "_seg", "_flows", "_outlines", "_overlay",
                   "_ignore")

# What a Cellpose _seg.npy may contain: numpy arrays, dtypes and scalars, plain containers.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("builtins", "slice"), ("builtins", "complex"),
    ("collections", "OrderedDict"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain values; any other global is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE_GLOBALS or (module == "numpy" and name.endswith("DType")) \
                or module == "numpy.dtypes":
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused: {module}.{name}")


def read_seg_npy(path) -> np.ndarray:
    """The ``masks`` of a Cellpose ``_seg.npy`` file as ``(H, W) int32``, without running code."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        stream = _io.BytesIO(raw)
        version = np.lib.format.read_magic(stream)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        _, _, dtype = read_header(stream)
        if dtype.hasobject:
            obj = _ArrayUnpickler(stream).load()
            data = obj.item() if isinstance(obj, np.ndarray) and obj.shape == () else obj
        else:
            data = np.lib.format.read_array(_io.BytesIO(raw), allow_pickle=False)
    except (ValueError, pickle.UnpicklingError, EOFError, AttributeError) as exc:
        raise InputError(path, f"not a readable Cellpose _seg.npy ({exc})") from None
    masks = data.get("masks") if isinstance(data, dict) else data
    if not isinstance(masks, np.ndarray) or masks.ndim != 2 or masks.dtype.kind not in "uib":
        raise InputError(path, "no 2D integer 'masks' array in this _seg.npy")
    return masks.astype(np.int32)


def read_user_label(path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A label file of any layout above -> ``(H, W) int32``; ``shape`` (H, W) checked if given."""
    path = Path(path)
    if path.name.endswith("_seg.npy"):
        label = read_seg_npy(path)
        if shape is not None and label.shape != tuple(shape[:2]):
            raise InputError(path, f"masks shape {label.shape} does not match image shape "
                                   f"{tuple(shape[:2])}")
        return label
    return read_label(path, shape)


def is_image_file(path: Path) -> bool:
    """An image to segment or train on (not a label, mask or output file)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.stem.endswith(NON_IMAGE_STEMS)


def label_file_for(image: Path, labels_dir: Path) -> Path | None:
    """The first label file of ``image`` in ``labels_dir`` (LABEL_SUFFIXES order), or None."""
    for suffix in LABEL_SUFFIXES:
        candidate = labels_dir / (image.stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def find_pairs(images, labels=None) -> list[tuple[Path, Path]]:
    """``(image, label file)`` pairs of a folder of images and its labels folder.

    ``labels`` None: each image's label is looked for in ``images/../labels`` when it exists
    (the challenge layout), then in the images folder (Cellpose's), so that masks saved next to
    the images are found beside an unrelated ``labels`` folder. An image without a label file is
    an :class:`InputError` naming it and the names looked for; so is a folder without images.
    """
    images = Path(images)
    if not images.is_dir():
        raise InputError(images, "not a folder of images")
    if labels is None:
        sibling = images.parent / "labels"
        folders = [sibling, images] if sibling.is_dir() else [images]
    else:
        folders = [Path(labels)]
        if not folders[0].is_dir():
            raise InputError(labels, "labels folder not found")
    files = [p for p in list_images(images) if is_image_file(p)]
    if not files:
        raise InputError(images, "no images (bmp, png, jpg, tif) in this folder")
    pairs = []
    for image in files:
        label = next(filter(None, (label_file_for(image, f) for f in folders)), None)
        if label is None:
            where = " or ".join(str(f) for f in folders)
            raise InputError(image, f"no label in {where}: expected {image.stem}_label.tiff, "
                                    f"{image.stem}_masks.tif/png or {image.stem}_seg.npy")
        pairs.append((image, label))
    return pairs


def read_pair(image: Path, label: Path) -> tuple[np.ndarray, np.ndarray]:
    """The raw image ``(H, W, C)`` and its label map ``(H, W) int32``, checked to match."""
    raw = read_image(image)
    try:
        return raw, read_user_label(label, raw.shape[:2])
    except InputError as exc:
        raise InputError(image, f"label {label.name}: {exc.reason}") from None
