"""Image and instance-label I/O for the NeurIPS 2022 cell segmentation formats.

Every reader raises :class:`InputError` with a one-line message that names the file when the
input is unusable (unreadable, truncated, empty, all-NaN, 3D stack, wrong shape), so command-line
tools can report it and go on with the next file.
"""
from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import tempfile
from pathlib import Path

import cv2
import numpy as np
import tifffile

LOGGER = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
LABEL_SUFFIX = "_label.tiff"          # labels/NAME_label.tiff: the instance label map of NAME
IGNORE_SUFFIX = "_ignore.png"         # labels/NAME_ignore.png: nonzero = pixel not in the loss
# File names quoted in a warning about unusable files (the count is always given).
LOG_FIRST_NAMES = 5

# Percentiles of the per-channel intensity scaling (Cellpose and the challenge baseline use 1/99).
NORM_LOWER_PERCENTILE = 1.0
NORM_UPPER_PERCENTILE = 99.8
# A channel whose percentile range is below this (in raw units) is treated as constant.
NORM_MIN_RANGE = 1e-6
# A channel whose range is under this fraction of the strongest channel's is "nearly empty".
NORM_WEAK_CHANNEL = 0.1
# Above this many pixels, percentiles are estimated on a strided subsample (exact enough, far faster).
NORM_SAMPLE_PIXELS = 4_000_000


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Mode of files written by atomic_write: what open() would give (mkstemp's temporary files are 0600,
# which would leave predictions written inside Docker as root unreadable to the host's user).
FILE_MODE = 0o666 & ~_current_umask()


class InputError(ValueError):
    """A user's input file cannot be used; ``str(err)`` is one line naming the file."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = " ".join(str(reason).split())  # one line, whatever the cause said
        super().__init__(f"{self.path}: {self.reason}")


def list_images(folder) -> list[Path]:
    """Sorted image files (by IMAGE_SUFFIXES, case-insensitive) directly inside ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "not a folder")
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _is_image(path: Path) -> bool:
    return (path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
            and not path.name.startswith("."))


def _list_file_images(path: Path) -> list[Path]:
    """The images a list file names: one path per line, relative to the list file's folder unless
    absolute; blank lines and ``#`` comments skipped. A missing or non-image entry is an
    :class:`InputError` naming the list file and the line."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read the list file ({exc})") from None
    out = []
    for number, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        image = Path(entry).expanduser()
        image = Path(os.path.normpath(image if image.is_absolute() else path.parent / image))
        if not _is_image(image):
            why = "not an image " + "/".join(IMAGE_SUFFIXES) if image.exists() else "no such file"
            raise InputError(path, f"line {number}: {entry}: {why}")
        out.append(image)
    return out


def find_images(source, recursive: bool = False, name_filter: str = "") -> list[Path]:
    """The images of an input (predict.py's ``-i``): an image file; a folder's images (sorted;
    ``recursive``: those of its subfolders too, hidden ones skipped); a glob pattern
    (``data/*/img_*.png``, ``**`` for any depth; sorted); or a list file (``.txt``, see
    :func:`_list_file_images`, in its order). ``name_filter``: only the images whose stem ends
    with it (Cellpose's ``--img_filter``, e.g. ``_c0``). A source that is none of these, or
    ``recursive`` with another input than a folder, is an :class:`InputError`."""
    text = str(source)
    path = Path(text).expanduser()
    if recursive and not path.is_dir():
        raise InputError(source, "--recursive needs a folder as input")
    if path.is_dir():
        if recursive:
            files = sorted(p for p in path.rglob("*") if _is_image(p)
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
        else:
            files = list_images(path)
    elif path.is_file() and path.suffix.lower() == ".txt":
        files = _list_file_images(path)
    elif path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise InputError(source, f"not an image ({' '.join(IMAGE_SUFFIXES)}), a folder, a "
                                     "list file (.txt) or a dataset YAML")
        files = [path]
    elif glob.has_magic(text):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True)
                       if _is_image(Path(p)))
    else:
        raise InputError(source, "no such file or folder")
    return [p for p in files if p.stem.endswith(name_filter)]


def label_path_for(image_path, labels_dir) -> Path:
    """NeurIPS layout: images/NAME.ext pairs with labels/NAME_label.tiff."""
    return Path(labels_dir) / (Path(image_path).stem + LABEL_SUFFIX)


def file_key(path) -> str:
    """``"path|size|mtime_ns"``: changes whenever the file does ("path|-1|-1" when it is missing)."""
    try:
        st = os.stat(path)
        return f"{path}|{st.st_size}|{st.st_mtime_ns}"
    except OSError:
        return f"{path}|-1|-1"


def warn_names(logger: logging.Logger, what: str, names: list[str]) -> None:
    """One warning on ``logger``: ``what``, how many ``names`` and the first LOG_FIRST_NAMES of them."""
    if names:
        first = ", ".join(names[:LOG_FIRST_NAMES]) + (", ..." if len(names) > LOG_FIRST_NAMES else "")
        logger.warning("%s: %d (%s)", what, len(names), first)


def one_line(text, limit: int = 300) -> str:
    """``text`` on one line, cut at a word boundary (with "...") past ``limit`` characters."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit)
    return text[:cut if cut > limit // 2 else limit].rstrip(" ,;:") + " ..."


def failure_reason(exc: BaseException) -> str:
    """Why a file failed, on one line: an InputError's reason, else "ExceptionType: message"."""
    if isinstance(exc, InputError):
        return exc.reason
    return f"{type(exc).__name__}: {one_line(exc)}".rstrip(": ")


# Axes letters of tifffile series: samples/channels, and the two spatial axes; tifffile's 'Q'
# (shape saved without axes names) and 'I' (generic pages) carry no meaning.
_CHANNEL_AXES = "SC"
_UNNAMED_AXES = "QI"
# Without axes metadata, a first or last axis up to this long is read as channels (and more than 4
# reported as too many channels), a longer one as the planes of a 3D stack.
GUESS_CHANNELS_MAX = 8
MAX_CHANNELS = 4
MIN_IMAGE_SIDE = 2  # pixels; a 1-pixel row or column is not a 2D image


def _read_tiff(path: Path) -> tuple[np.ndarray, str]:
    with tifffile.TiffFile(str(path)) as tif:
        series = tif.series[0]
        return series.asarray(), series.axes


def _read_raw(path: Path) -> tuple[np.ndarray, str]:
    """The stored array and its axes (tifffile's letters; YX[S] for other formats; "" if unknown)."""
    if not path.is_file():
        raise InputError(path, "no such file")
    if path.stat().st_size == 0:
        raise InputError(path, "empty file (0 bytes)")
    axes = ""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            arr, axes = _read_tiff(path)
        else:
            arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if arr is None:
                raise ValueError("not a readable image")
            if arr.ndim == 3 and arr.shape[2] >= 3:  # OpenCV gives BGR(A)
                arr = arr[..., [2, 1, 0] + list(range(3, arr.shape[2]))]
            axes = "YXS"[:arr.ndim]
    except InputError:
        raise
    except Exception as exc:  # tifffile/cv2 raise many types for corrupt files
        raise InputError(path, f"cannot read ({type(exc).__name__}: {one_line(exc)})") from None
    arr = np.asarray(arr)
    if arr.size == 0:
        raise InputError(path, f"image has no pixels (shape {arr.shape})")
    if len(axes) != arr.ndim:
        axes = ""
    return arr, axes


def _drop_singletons(arr: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
    """Remove length-1 axes, except the spatial ones (Y, X; the last two when unnamed)."""
    names = axes or "?" * max(arr.ndim - 2, 0) + "YX"[-min(arr.ndim, 2):]
    keep = [i for i, a in enumerate(names) if arr.shape[i] != 1 or a in "YX"]
    return arr.reshape([arr.shape[i] for i in keep]), "".join(names[i] for i in keep) if axes else ""


def _channels_last(arr: np.ndarray, path, axis: int) -> np.ndarray:
    n = arr.shape[axis]
    if n > MAX_CHANNELS:
        raise InputError(path, f"{n} channels (shape {arr.shape}); at most {MAX_CHANNELS} are supported")
    return np.moveaxis(arr, axis, -1)


def _to_hwc(arr: np.ndarray, axes: str, path) -> np.ndarray:
    """``(H, W, C)`` with C in 1..4. A TIFF's axes metadata decides which axis holds channels
    (S, C) and which planes of a stack (Z, T, ...); without it (Q, I, or another format) a short
    first or last axis holds channels."""
    arr, axes = _drop_singletons(arr, axes)
    if arr.ndim < 2:
        raise InputError(path, f"a 1D array of shape {arr.shape} where a 2D image is expected")
    if arr.ndim == 2:
        out = arr[..., None]
    elif arr.ndim != 3:
        where = f"axes {axes}, " if axes else ""
        raise InputError(path, f"expected a 2D image, got an array of {where}shape {arr.shape}")
    else:
        extra = [i for i, a in enumerate(axes) if a not in "YX"] if axes else []
        kind = axes[extra[0]] if len(extra) == 1 and "Y" in axes and "X" in axes else ""
        if kind and kind in _CHANNEL_AXES:
            out = _channels_last(arr, path, extra[0])
        elif kind and kind not in _UNNAMED_AXES:
            raise InputError(path, f"3D stack of {arr.shape[extra[0]]} planes along axis {kind} "
                                   f"(axes {axes}, shape {arr.shape}) where a 2D image is expected")
        elif arr.shape[-1] <= GUESS_CHANNELS_MAX:
            out = _channels_last(arr, path, -1)
        elif arr.shape[0] <= GUESS_CHANNELS_MAX:
            out = _channels_last(arr, path, 0)
            if kind:
                LOGGER.warning("%s: %d pages without axes metadata, read as channels",
                               path, arr.shape[0])
        else:
            raise InputError(path, f"3D stack of shape {arr.shape} where a 2D image is expected")
    h, w = out.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise InputError(path, f"image of {h}x{w} pixels is too small "
                               f"(each side must be at least {MIN_IMAGE_SIDE} pixels)")
    return out


def read_image(path) -> np.ndarray:
    """Read an image as ``(H, W, C)``, C in 1..4, in its stored dtype (uint8/uint16/int16/float32...)."""
    path = Path(path)
    arr, axes = _read_raw(path)
    return as_image(arr, path, axes)


def as_image(arr, source="array", axes: str = "") -> np.ndarray:
    """An in-memory image (2D, HWC or CHW, C <= 4) as :func:`read_image` returns a file's;
    ``source`` names it in an :class:`InputError`; ``axes``: tifffile's axis letters if known."""
    arr = _to_hwc(np.asarray(arr), axes, source)
    if arr.dtype.kind not in "biuf":
        raise InputError(source, f"unsupported pixel type {arr.dtype} (real numbers expected)")
    if arr.dtype.kind == "f" and np.isnan(arr).all():
        raise InputError(source, "all pixels are NaN")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    return arr


def _to_three_channels(img: np.ndarray) -> np.ndarray:
    c = img.shape[2]
    if c == 1:
        return np.repeat(img, 3, axis=2)
    if c == 2:  # two stains: put them in green and blue, an empty red channel (fluorescence-like)
        return np.concatenate([np.zeros_like(img[..., :1]), img], axis=2)
    return img[..., :3]  # RGB, or RGBA with alpha dropped


def _percentiles(ch: np.ndarray, lower: float, upper: float) -> tuple[float, float] | None:
    """(lower, upper) percentiles of a channel (None when it has no finite pixel).

    8/16-bit integer channels use a histogram (exact to one grey level, ~10x faster than sorting).
    """
    if ch.dtype in (np.uint8, np.uint16):
        hist = np.bincount(ch.ravel(), minlength=256)
        cdf = np.cumsum(hist) / ch.size
        lo = int(np.searchsorted(cdf, lower / 100.0, side="left"))
        hi = int(np.searchsorted(cdf, upper / 100.0, side="left"))
        if hi == lo:  # sparse signal: fall back to the full range
            present = np.flatnonzero(hist)
            lo, hi = int(present[0]), int(present[-1])
        return float(lo), float(hi)
    finite = ch[np.isfinite(ch)]
    if finite.size == 0:
        return None
    lo, hi = np.percentile(finite, [lower, upper])
    if hi - lo < NORM_MIN_RANGE:
        lo, hi = finite.min(), finite.max()
    return float(lo), float(hi)


def _scale_channel(ch: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map [lo, hi] -> [0, 255] uint8 (clipped); a lookup table for 8/16-bit integer channels."""
    if ch.dtype in (np.uint8, np.uint16):
        levels = np.arange(np.iinfo(ch.dtype).max + 1, dtype=np.float32)
        lut = np.clip((levels - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)
        return lut[ch]
    scaled = (ch.astype(np.float32) - lo) * (255.0 / (hi - lo))
    np.clip(np.nan_to_num(scaled, nan=0.0), 0, 255, out=scaled)
    return (scaled + 0.5).astype(np.uint8)


def normalize_image(img: np.ndarray, lower: float = NORM_LOWER_PERCENTILE,
                    upper: float = NORM_UPPER_PERCENTILE) -> np.ndarray:
    """Raw ``(H, W, C)`` image -> network image ``(H, W, 3) uint8`` by per-channel percentile scaling.

    Each channel is mapped linearly so that its ``lower`` percentile becomes 0 and its ``upper``
    percentile 255 (clipped), in float32 or through a lookup table, so 16-bit data never
    overflows. A constant channel becomes 0. A nearly empty channel (range under
    NORM_WEAK_CHANNEL of the strongest channel's, e.g. the red of a fluorescence RGB image) is
    scaled with the strongest channel's range, so its noise is not stretched to full range.
    """
    if img.ndim == 2:
        img = img[..., None]
    step = max(1, int(np.sqrt(img.shape[0] * img.shape[1] / NORM_SAMPLE_PIXELS)))
    if img.shape[2] == 1:  # grey: scale once, then replicate
        b = _percentiles(img[::step, ::step, 0], lower, upper)
        if b is None or b[1] - b[0] < NORM_MIN_RANGE:
            return np.zeros(img.shape[:2] + (3,), np.uint8)
        return np.repeat(_scale_channel(img[..., 0], *b)[..., None], 3, axis=2)
    img = _to_three_channels(img)
    bounds = [_percentiles(img[::step, ::step, c], lower, upper) for c in range(3)]
    ranges = [b[1] - b[0] if b else 0.0 for b in bounds]
    ref = max(ranges)
    out = np.zeros(img.shape, np.uint8)
    for c, b in enumerate(bounds):
        if b is None or ref < NORM_MIN_RANGE:
            continue  # empty or constant image
        lo, hi = b
        if ranges[c] < NORM_WEAK_CHANNEL * ref:
            hi = lo + ref
        out[..., c] = _scale_channel(img[..., c], lo, hi)
    return out


def select_channels(img: np.ndarray, chan: int, chan2: int = 0, source="array") -> np.ndarray:
    """Cellpose's channel choice on a raw ``(H, W, C)`` image -> ``(H, W, 1)`` or ``(H, W, 2)``.

    ``chan``: the channel of the cytoplasm / membrane (or of the nuclei, for nuclei alone), 1-based
    (1 = red, 2 = green, 3 = blue, 4 = the fourth), or 0 = grey (the mean of all channels).
    ``chan2``: the nuclear channel, 1-based, or 0 = none. With both, the result holds (chan, chan2),
    which :func:`normalize_image` puts in green and blue like any two-stain image. A channel the
    image does not have is an :class:`InputError` naming ``source``.
    """
    if img.ndim == 2:
        img = img[..., None]
    n = img.shape[2]
    picked = []
    for which, c in (("chan", chan), ("chan2", chan2)):
        if not 0 <= c <= MAX_CHANNELS:
            raise InputError(source, f"--{which} {c}: channels are 0 (grey) or 1..{MAX_CHANNELS}")
        if c > n:
            raise InputError(source, f"--{which} {c}: the image has {n} channel(s)")
    picked.append(img.astype(np.float32).mean(axis=2, keepdims=True) if chan == 0
                  else img[..., chan - 1:chan])
    if chan2:
        picked.append(img[..., chan2 - 1:chan2].astype(picked[0].dtype))
    return np.concatenate(picked, axis=2) if len(picked) > 1 else picked[0]


def network_input(raw: np.ndarray, channels: tuple[int, int] | None = None,
                  source="array") -> tuple[np.ndarray, np.ndarray]:
    """Raw ``(H, W, C)`` image -> (the raw image the modality classifier sees: ``channels`` =
    (chan, chan2) selected as :func:`select_channels` does when given, else ``raw``; its network
    image ``(H, W, 3) uint8``). The one preparation of predict.py, evaluate.py, the Python API."""
    if channels is not None:
        raw = select_channels(raw, *channels, source=source)
    return raw, normalize_image(raw)


def load_image(path, channels: tuple[int, int] | None = None) -> np.ndarray:
    """Path -> network image ``(H, W, 3) uint8`` (read, ``channels`` = (chan, chan2) selected as
    :func:`select_channels` does when given, percentile normalisation)."""
    return network_input(read_image(path), channels, path)[1]


def read_label(path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read an instance label map as ``(H, W) int32``; ``shape`` (H, W) is checked when given."""
    path = Path(path)
    arr = np.squeeze(_read_raw(path)[0])
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and path.suffix.lower() not in (".tif", ".tiff"):
        arr = arr[..., 0]  # a PNG label saved as RGB grey
    if arr.ndim != 2:
        raise InputError(path, f"expected a 2D label map, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise InputError(path, "label map contains NaN or infinite values")
        if (arr != np.round(arr)).any():
            raise InputError(path, "label map has non-integer values")
    if arr.dtype.kind not in "uifb":
        raise InputError(path, f"unsupported label dtype {arr.dtype}")
    if arr.min() < 0:
        raise InputError(path, "label map has negative ids")
    if arr.max() > np.iinfo(np.int32).max:
        raise InputError(path, "label ids exceed int32")
    if shape is not None and tuple(arr.shape) != tuple(shape[:2]):
        raise InputError(path, f"label shape {arr.shape} does not match image shape {tuple(shape[:2])}")
    return arr.astype(np.int32, copy=False)


@contextlib.contextmanager
def atomic_write(path):
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, FILE_MODE)
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# What atomic_write's temporary files look like: .STEM.<8 random characters>.tmp[.SUFFIX]
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[^.]+)?$")


def remove_stale_temporaries(folder, older_than: float) -> int:
    """Delete atomic_write's temporary files in ``folder`` last modified before ``older_than``
    (a time.time() value), which a killed process left behind; returns how many."""
    folder, n = Path(folder), 0
    if not folder.is_dir():
        return 0
    for f in folder.iterdir():
        try:
            if _TEMPORARY.match(f.name) and f.is_file() and f.stat().st_mtime < older_than:
                f.unlink()
                n += 1
        except OSError:  # gone meanwhile, or not ours to remove
            continue
    if n:
        LOGGER.info("%s: removed %d temporary file(s) of an interrupted run", folder, n)
    return n


def check_output_dir(path) -> Path:
    """Make ``path`` a folder (if needed) and check a file can be created in it, before any work;
    :class:`InputError` (one line) when it cannot."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(path, "output folder expected, but this is an existing file")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise InputError(path, f"cannot write in this folder ({exc.strerror or exc})") from None
    return path


def check_output_file(path) -> Path:
    """Check that the file ``path`` can be written (its folder made if needed), before any work."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "output file expected, but this is an existing folder")
    check_output_dir(path.parent)
    return path


def write_table(frame, path) -> Path:
    """Write a pandas DataFrame as CSV atomically; when ``path`` cannot be written (it became a
    folder, the disk filled up...), the table goes to the temporary folder instead and the error
    names both: finished results are never lost. Returns the path written."""
    path = Path(path)
    try:
        with atomic_write(path) as tmp:
            frame.to_csv(tmp, index=False)
        return path
    except OSError as exc:
        fd, rescue = tempfile.mkstemp(prefix=f"{path.stem}-", suffix=path.suffix or ".csv")
        os.close(fd)
        frame.to_csv(rescue, index=False)
        LOGGER.error("%s: cannot write (%s); the results are in %s", path,
                     one_line(exc.strerror or exc), rescue)
        return Path(rescue)


def write_label(path, label: np.ndarray) -> None:
    """Write an instance label map atomically as zlib-compressed TIFF: uint16, or uint32 past 65,535."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label must be 2D, got shape {label.shape}")
    dtype = np.uint16 if label.max(initial=0) <= np.iinfo(np.uint16).max else np.uint32
    with atomic_write(path) as tmp:
        tifffile.imwrite(str(tmp), label.astype(dtype, copy=False), compression="zlib")


def write_image(path, img: np.ndarray) -> None:
    """Write an image (PNG/JPG/BMP via OpenCV from RGB, TIFF via tifffile) atomically."""
    path = Path(path)
    with atomic_write(path) as tmp:
        if path.suffix.lower() in (".tif", ".tiff"):
            rgb = img.ndim == 3 and img.shape[2] in (3, 4)   # say so: tifffile's default will change
            tifffile.imwrite(str(tmp), img, photometric="rgb" if rgb else None)
        else:
            arr = img
            if img.ndim == 3 and img.shape[2] in (3, 4):  # OpenCV writes BGR(A)
                arr = img[..., [2, 1, 0] + list(range(3, img.shape[2]))]
            if not cv2.imwrite(str(tmp), np.ascontiguousarray(arr)):
                raise OSError(f"{path}: OpenCV could not write the image")
