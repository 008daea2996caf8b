"""Prepare the unlabeled images of the NeurIPS 2022 release for pseudo-labelling.

    python -m utils.prepare_unlabeled --src NeurIPS_CellSegData/Train_Unlabeled \
        --dst NeurIPS_CellSegData/Train_Unlabeled/images --tile 1024

Every image under ``--src`` (any format of utils/io, searched recursively; ``--dst`` and
``SRC/labels`` are skipped) is either

- copied unchanged to ``DST/NAME.ext`` (release part 1: ordinary images, checked readable), or
- cut into ``--tile`` x ``--tile`` tiles ``DST/NAME_yYYYYYY_xXXXXXX.png`` when it is a whole-slide
  TIFF: a ``.tif``/``.tiff`` in a folder whose name contains "whole-slide" (also "whole_slide",
  "wholeslide"; release part 2), or any TIFF larger than WHOLE_SLIDE_PIXELS. Slides are read
  tile-wise from the level 0 of their pyramid by decoding only the TIFF tiles/strips a region
  covers (no zarr needed): memory stays at a few tiles whatever the slide's size. Background
  tiles (:func:`is_background`) are skipped. Tiles start every ``--tile`` pixels; the last row and
  column are shifted to end at the slide's border (overlapping their neighbour) so every tile is
  full size, unless the slide is smaller than a tile.

``--manifest`` (default DST/manifest.csv) lists every output: name, source (relative to --src),
y, x, h, w (pixels of the source; a copied image is the whole of its source). Outputs are written
atomically; an existing output is kept (rerun after an interruption) unless ``--overwrite``.
A bad file is one line naming it, and the run goes on (exit status 1 at the end).
"""
from __future__ import annotations

import argparse
import csv
import logging
import math
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import tifffile
from tqdm import tqdm

from utils import io as uio

LOGGER = logging.getLogger(__name__)

# A folder whose name matches this holds whole-slide images (NeurIPS release part 2).
WHOLE_SLIDE_PATTERN = re.compile(r"whole[-_ ]?slide", re.IGNORECASE)
# A TIFF above this many level-0 pixels is a whole slide wherever it is: 1e8 px (10k x 10k) is
# ~300 MB decoded as RGB uint8, far above the part-1 images (at most a few thousand px a side).
WHOLE_SLIDE_PIXELS = 100_000_000
# Background test on a tile subsampled with this stride (8: a 1024 tile -> 128 x 128 pixels).
BG_STRIDE = 8
# A subsampled pixel is content when a channel differs from the tile's median (its background)
# by more than this fraction of the slide's intensity range (16 grey levels of 255 for uint8).
BG_DELTA = 16 / 255
# A tile is background when under this fraction of its pixels is content (0.2% of a 1024 tile:
# ~2100 px, a handful of nuclei; JPEG noise and dust specks stay below it).
MIN_CONTENT_FRACTION = 0.002
# A TIFF segment (tile or strip) above this many decoded bytes cannot be read tile-wise.
MAX_SEGMENT_BYTES = 256 * 2**20
# A level-0 series of more pages than this is a stack, not one image's channels.
MAX_PLANES = 4
MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("name", "source", "y", "x", "h", "w")


class TiledTiffReader:
    """Regions of the level 0 of a (tiled, pyramidal, BigTIFF) TIFF, decoded segment by segment.

    ``shape`` is ``(H, W, C)``; :meth:`read` returns ``(h, w, C)`` arrays of ``dtype``. Only the
    tiles or strips overlapping the region are read and decoded. Pages of a level-0 series with
    several pages (one per channel) are stacked as channels.
    """

    def __init__(self, path):
        self.path, self.tif = Path(path), None
        try:
            self.tif = tifffile.TiffFile(str(self.path))
            self.pages = list(self.tif.series[0].levels[0].pages)
        except Exception as exc:  # tifffile raises many types for corrupt files
            self.close()
            raise uio.InputError(self.path, f"cannot read TIFF ({type(exc).__name__}: {exc})") from None
        first = self.pages[0]
        if len(self.pages) > MAX_PLANES or any(p.shaped[1:4] != first.shaped[1:4] for p in self.pages):
            self.close()
            raise uio.InputError(self.path, f"level 0 is a stack of {len(self.pages)} pages, not one image")
        if first.shaped[1] != 1 or first.dtype is None:
            self.close()
            raise uio.InputError(self.path, f"unsupported TIFF layout {first.shaped} ({first.dtype})")
        self.height, self.width = int(first.shaped[2]), int(first.shaped[3])
        self.planes = int(first.shaped[0])          # planar-separate samples per page
        self.samples = int(first.shaped[4])         # contiguous samples per pixel
        self.channels = self.planes * self.samples * len(self.pages)
        self.dtype = np.dtype(first.dtype)
        self.tiled = first.is_tiled
        self.seg_h = int(first.tilelength if self.tiled else min(first.rowsperstrip, self.height))
        self.seg_w = int(first.tilewidth if self.tiled else self.width)
        seg_bytes = self.seg_h * self.seg_w * self.samples * self.dtype.itemsize
        if seg_bytes > MAX_SEGMENT_BYTES:
            self.close()
            raise uio.InputError(self.path, f"segments of {self.seg_h} x {self.seg_w} px "
                                            f"({seg_bytes / 2**20:.0f} MB) cannot be read tile-wise")

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.height, self.width, self.channels

    def close(self) -> None:
        if self.tif is not None:
            self.tif.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _segments(self, y: int, x: int, h: int, w: int) -> list[int]:
        """Segment indices of one plane overlapping the region (row-major)."""
        ny, nx = math.ceil(self.height / self.seg_h), math.ceil(self.width / self.seg_w)
        rows = range(y // self.seg_h, min((y + h - 1) // self.seg_h + 1, ny))
        cols = range(x // self.seg_w, min((x + w - 1) // self.seg_w + 1, nx))
        return [r * nx + c for r in rows for c in cols]

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Pixels ``[y:y+h, x:x+w]`` of level 0 as ``(h, w, C)`` (empty segments read as 0)."""
        out = np.zeros((h, w, self.channels), self.dtype)
        per_plane = math.ceil(self.height / self.seg_h) * math.ceil(self.width / self.seg_w)
        fh = self.tif.filehandle
        for k, page in enumerate(self.pages):
            key = getattr(page, "keyframe", None) or page  # a TiffFrame decodes with its keyframe
            decode, jpegtables = key.decode, getattr(page, "jpegtables", None) or key.jpegtables
            for plane in range(self.planes):
                c0 = (k * self.planes + plane) * self.samples
                for i in self._segments(y, x, h, w):
                    index = plane * per_plane + i
                    data = None
                    if page.databytecounts[index]:
                        fh.seek(page.dataoffsets[index])
                        data = fh.read(page.databytecounts[index])
                    seg, pos, _ = decode(data, index, jpegtables=jpegtables)
                    if seg is None:
                        continue
                    sy, sx = pos[2], pos[3]
                    ys, ye = max(y, sy), min(y + h, sy + seg.shape[1])
                    xs, xe = max(x, sx), min(x + w, sx + seg.shape[2])
                    out[ys - y:ye - y, xs - x:xe - x, c0:c0 + self.samples] = \
                        seg[0, ys - sy:ye - sy, xs - sx:xe - sx]
        return out


def tile_starts(size: int, tile: int) -> list[int]:
    """Tile offsets along an axis of ``size`` pixels: every ``tile``, the last one shifted to
    end at the border (``[0]`` when the axis is at most one tile)."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, tile))
    return starts + [size - tile]


def tile_stats(tile: np.ndarray) -> tuple[float, float, float]:
    """``(q, lo, hi)`` of a tile ``(h, w, C)`` subsampled with stride BG_STRIDE, raw units:
    ``q`` the (1 - MIN_CONTENT_FRACTION) quantile of each pixel's largest channel deviation
    from the tile's per-channel median (its background level), ``lo``/``hi`` the 0.1 and 99.9
    percentiles of its values."""
    small = tile[::BG_STRIDE, ::BG_STRIDE].astype(np.float32)
    background = np.median(small.reshape(-1, small.shape[2]), axis=0)
    deviation = np.abs(small - background).max(axis=2)
    lo, hi = np.percentile(small, [0.1, 99.9])
    return float(np.quantile(deviation, 1.0 - MIN_CONTENT_FRACTION)), float(lo), float(hi)


def is_background(tile: np.ndarray, scale: float) -> bool:
    """True when at most MIN_CONTENT_FRACTION of the subsampled pixels of ``tile`` differ from
    its background level by more than BG_DELTA * ``scale`` (the slide's intensity range in raw
    units), i.e. when :func:`tile_stats`'s ``q`` is at most that."""
    return tile_stats(tile)[0] <= BG_DELTA * scale


def _tile_suffix(dtype: np.dtype, channels: int) -> str:
    """PNG for 8/16-bit images of 1, 3 or 4 channels, TIFF otherwise (raw values kept)."""
    return ".png" if dtype in (np.uint8, np.uint16) and channels in (1, 3, 4) else ".tif"


class _Names:
    """Output stems of this run: two sources must not write the same name."""

    def __init__(self):
        self.owner: dict[str, Path] = {}

    def claim(self, stem: str, source: Path) -> None:
        if self.owner.setdefault(stem, source) != source:
            raise uio.InputError(source, f"output name {stem} already taken by {self.owner[stem]}")


def _scan(reader: TiledTiffReader, grid: list, tile: int, desc: str) -> tuple[float, list[bool]]:
    """Non-uint8 slides: one pass over every tile -> (intensity range in raw units: the largest
    99.9 percentile minus the smallest 0.1 percentile over tiles, at least 1; per-tile content)."""
    stats = [tile_stats(reader.read(y, x, min(tile, reader.height), min(tile, reader.width)))
             for y, x in tqdm(grid, desc=f"{desc} (scan)", unit="tile", leave=False)]
    scale = max(max(s[2] for s in stats) - min(s[1] for s in stats), 1.0)
    return scale, [s[0] > BG_DELTA * scale for s in stats]


def cut_slide(path: Path, rel: str, dst: Path, tile: int, names: _Names, overwrite: bool) -> list[dict]:
    """Cut one whole-slide TIFF into non-background tiles in ``dst``; manifest rows.

    uint8 slides (range 255) are decided tile by tile in one pass; other dtypes need the slide's
    intensity range first: a scan pass (:func:`_scan`), then only content tiles are read again.
    """
    rows = []
    with TiledTiffReader(path) as reader:
        suffix = _tile_suffix(reader.dtype, reader.channels)
        grid = [(y, x) for y in tile_starts(reader.height, tile) for x in tile_starts(reader.width, tile)]
        h, w = min(tile, reader.height), min(tile, reader.width)
        scale, content = (255.0, None) if reader.dtype == np.uint8 else _scan(reader, grid, tile, path.name)
        for i, (y, x) in enumerate(tqdm(grid, desc=path.name, unit="tile", leave=False, dynamic_ncols=True)):
            name = f"{path.stem}_y{y:06d}_x{x:06d}"
            names.claim(name, path)
            out = dst / (name + suffix)
            if overwrite or not out.is_file():
                if content is not None and not content[i]:
                    continue
                pixels = reader.read(y, x, h, w)
                if content is None and is_background(pixels, scale):
                    continue
                uio.write_image(out, pixels[..., 0] if pixels.shape[2] == 1 else pixels)
            rows.append({"name": out.name, "source": rel, "y": y, "x": x, "h": h, "w": w})
    LOGGER.info("%s: %d x %d px, %d of %d tiles kept", rel, reader.height, reader.width, len(rows), len(grid))
    return rows


def copy_image(path: Path, rel: str, dst: Path, names: _Names, overwrite: bool) -> dict:
    """Check an ordinary image is readable and copy its file unchanged; its manifest row."""
    h, w = uio.read_image(path).shape[:2]
    names.claim(path.stem, path)
    out = dst / path.name
    if overwrite or not out.is_file():
        with uio.atomic_write(out) as tmp:
            shutil.copyfile(path, tmp)
    return {"name": out.name, "source": rel, "y": 0, "x": 0, "h": h, "w": w}


def _is_whole_slide(path: Path, src: Path) -> bool:
    """A TIFF in a "whole-slide" folder (below ``src``) or above WHOLE_SLIDE_PIXELS."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return False
    if any(WHOLE_SLIDE_PATTERN.search(part) for part in path.relative_to(src).parts[:-1]):
        return True
    try:
        with TiledTiffReader(path) as reader:
            return reader.height * reader.width > WHOLE_SLIDE_PIXELS
    except uio.InputError:
        return False  # copy_image reports it


def find_sources(src: Path, dst: Path) -> list[Path]:
    """Image files under ``src`` (sorted, recursive), without ``dst`` and ``src/labels``."""
    skip = [dst.resolve(), (src / "labels").resolve()]
    found = []
    for p in sorted(src.rglob("*")):
        if not p.is_file() or p.suffix.lower() not in uio.IMAGE_SUFFIXES or p.name.startswith("."):
            continue
        if any(p.resolve().is_relative_to(s) for s in skip):
            continue
        found.append(p)
    return found


def write_manifest(path: Path, rows: list[dict]) -> None:
    with uio.atomic_write(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m utils.prepare_unlabeled",
                                description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--src", required=True, help="the unlabeled release (searched recursively)")
    p.add_argument("--dst", required=True, help="output folder of images and tiles")
    p.add_argument("--tile", type=int, default=1024, help="tile side for whole-slide images (px)")
    p.add_argument("--manifest", default=None, help=f"CSV of outputs (default DST/{MANIFEST_NAME})")
    p.add_argument("--overwrite", action="store_true", help="rewrite outputs that already exist")
    args = p.parse_args(argv)
    if args.tile < 1:
        p.error("--tile must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    src, dst = Path(args.src), Path(args.dst)
    if not src.is_dir():
        LOGGER.error("%s", uio.InputError(src, "not a folder"))
        return 2
    dst.mkdir(parents=True, exist_ok=True)
    rows, failures, names = [], [], _Names()
    for path in tqdm(find_sources(src, dst), desc="prepare", unit="file", dynamic_ncols=True):
        rel = path.relative_to(src).as_posix()
        try:
            if _is_whole_slide(path, src):
                rows += cut_slide(path, rel, dst, args.tile, names, args.overwrite)
            else:
                rows.append(copy_image(path, rel, dst, names, args.overwrite))
        except uio.InputError as exc:
            failures.append(str(exc))
            LOGGER.error("%s", exc)
        except (OSError, ValueError, RuntimeError, tifffile.TiffFileError) as exc:  # a bad segment
            failures.append(f"{path}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
            LOGGER.error("%s", failures[-1])
    manifest = Path(args.manifest) if args.manifest else dst / MANIFEST_NAME
    write_manifest(manifest, rows)
    LOGGER.info("%d images in %s (manifest %s); %d file(s) failed", len(rows), dst, manifest,
                len(failures))
    for line in failures:
        LOGGER.error("  %s", line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
