"""utils/prepare_unlabeled.py: a 30000 x 30000 whole slide cut tile-wise in bounded memory."""
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tifffile

from tests.conftest import REPO
from utils import io as uio
from utils.prepare_unlabeled import TiledTiffReader, is_background, tile_starts

SLIDE = 30000          # slide side (pixels): ~2.7 GB decoded as RGB uint8, never loaded whole
TIFF_TILE = 512        # the slide's own TIFF tiles
CUT = 1024             # --tile of the run
BACKGROUND = 232       # bright-field background grey level
# TIFF tiles (row, col) holding 'cells'; (58, 58) is the bottom-right corner tile of the slide.
CELL_TILES = {(3, 5), (20, 41), (58, 58), (30, 0)}
# Blank TIFF tiles with sensor-like noise (+0..2 grey levels): background all the same. Few, as
# noise compresses poorly (the other blank tiles are constant: the slide writes in seconds).
NOISY_TILES = {(0, 0), (10, 10), (10, 11), (11, 10), (11, 11), (40, 2)}
PEAK_RSS_LIMIT_KB = 2 * 1024 * 1024   # 2 GB (ru_maxrss is in kilobytes on Linux)
_BLANK = np.full((TIFF_TILE, TIFF_TILE, 3), BACKGROUND, np.uint8)


def _tiff_tile(r: int, c: int) -> np.ndarray:
    """The slide's TIFF tile (r, c) ``(512, 512, 3) uint8``: a bright background, noisy on
    NOISY_TILES and CELL_TILES, with dark purple disks ('nuclei') on CELL_TILES."""
    if (r, c) not in CELL_TILES and (r, c) not in NOISY_TILES:
        return _BLANK
    rng = np.random.default_rng(r * 1000 + c)
    tile = _BLANK + rng.integers(0, 3, _BLANK.shape, dtype=np.uint8)
    if (r, c) in CELL_TILES:
        yy, xx = np.mgrid[:TIFF_TILE, :TIFF_TILE]
        for cy, cx in rng.integers(40, TIFF_TILE - 40, (12, 2)):
            tile[(yy - cy) ** 2 + (xx - cx) ** 2 < 30 ** 2] = (120, 60, 140)
    return tile


def _region(y: int, x: int, h: int, w: int) -> np.ndarray:
    """Pixels of the slide from its tile function (what the TIFF holds)."""
    out = np.zeros((h, w, 3), np.uint8)
    for r in range(y // TIFF_TILE, (y + h - 1) // TIFF_TILE + 1):
        for c in range(x // TIFF_TILE, (x + w - 1) // TIFF_TILE + 1):
            t = _tiff_tile(r, c)
            ty, tx = r * TIFF_TILE, c * TIFF_TILE
            ys, ye, xs, xe = max(y, ty), min(y + h, ty + TIFF_TILE), max(x, tx), min(x + w, tx + TIFF_TILE)
            out[ys - y:ye - y, xs - x:xe - x] = t[ys - ty:ye - ty, xs - tx:xe - tx]
    return out


@pytest.fixture(scope="module")
def slide_dir(tmp_path_factory):
    """Train_Unlabeled-like folder: one part-1 image and a pyramidal tiled BigTIFF whole slide."""
    root = tmp_path_factory.mktemp("unlabeled")
    n = -(-SLIDE // TIFF_TILE)
    tiles = (_tiff_tile(r, c) for r in range(n) for c in range(n))  # row-major, as TIFF stores them
    (root / "release-part2-whole-slide").mkdir()
    with tifffile.TiffWriter(root / "release-part2-whole-slide" / "whole_slide_00001.tiff",
                             bigtiff=True) as tw:
        tw.write(tiles, shape=(SLIDE, SLIDE, 3), dtype=np.uint8, tile=(TIFF_TILE, TIFF_TILE),
                 compression="zlib", compressionargs={"level": 1}, photometric="rgb", subifds=1)
        tw.write(np.full((SLIDE // 32, SLIDE // 32, 3), BACKGROUND, np.uint8), subfiletype=1,
                 tile=(256, 256), compression="zlib", photometric="rgb")
    (root / "release-part1").mkdir()
    uio.write_image(root / "release-part1" / "cell_00001.png", _tiff_tile(3, 5))
    (root / "release-part1" / "broken.png").write_bytes(b"not an image")
    return root


def _cut_tiles():
    """Offsets (y, x) of the --tile 1024 grid whose tile overlaps a cell tile."""
    ys, xs = tile_starts(SLIDE, CUT), tile_starts(SLIDE, CUT)
    def overlaps(y, x, r, c):
        return y < (r + 1) * TIFF_TILE and r * TIFF_TILE < y + CUT and \
            x < (c + 1) * TIFF_TILE and c * TIFF_TILE < x + CUT
    return {(y, x) for y in ys for x in xs if any(overlaps(y, x, r, c) for r, c in CELL_TILES)}


def test_tile_starts_cover_the_axis():
    assert tile_starts(30000, 1024)[-2:] == [28672, 28976]
    assert tile_starts(500, 1024) == [0] and tile_starts(2048, 1024) == [0, 1024]


def test_cut_whole_slide_tile_wise_in_bounded_memory(slide_dir, tmp_path):
    dst = tmp_path / "images"
    # a wrapper process whose only child is the cutter: its RUSAGE_CHILDREN is the cutter's peak
    wrapper = ("import resource, subprocess, sys; "
               "rc = subprocess.call(sys.argv[1:]); "
               "print('MAXRSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
               "sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "utils.prepare_unlabeled",
                           "--src", str(slide_dir), "--dst", str(dst), "--tile", str(CUT)],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]          # broken.png failed, the rest went on
    bad = [ln for ln in proc.stderr.splitlines() if "broken.png" in ln]
    assert bad and all(len(ln) < 300 for ln in bad)
    peak_kb = int(proc.stdout.split("MAXRSS")[-1].split()[0])
    assert peak_kb < PEAK_RSS_LIMIT_KB, f"peak memory {peak_kb / 1024:.0f} MB"

    manifest = pd.read_csv(dst / "manifest.csv")
    assert list(manifest.columns) == ["name", "source", "y", "x", "h", "w"]
    copied = manifest[manifest["source"] == "release-part1/cell_00001.png"]
    assert list(copied["name"]) == ["cell_00001.png"] and (copied[["y", "x"]] == 0).all().all()
    tiles = manifest[manifest["source"] == "release-part2-whole-slide/whole_slide_00001.tiff"]
    assert {(y, x) for y, x in zip(tiles["y"], tiles["x"])} == _cut_tiles()  # background skipped
    assert (tiles["h"] == CUT).all() and (tiles["w"] == CUT).all()
    assert {p.name for p in dst.iterdir()} == set(manifest["name"]) | {"manifest.csv"}
    for row in tiles.itertuples():
        assert row.name == f"whole_slide_00001_y{row.y:06d}_x{row.x:06d}.png"
        np.testing.assert_array_equal(uio.read_image(dst / row.name), _region(row.y, row.x, row.h, row.w))


def test_reader_regions_and_background_rule(slide_dir):
    with TiledTiffReader(slide_dir / "release-part2-whole-slide" / "whole_slide_00001.tiff") as r:
        assert r.shape == (SLIDE, SLIDE, 3)  # level 0, not the pyramid's reduced level
        for y, x, h, w in ((0, 0, 10, 10), (5000, 2800, 700, 300), (SLIDE - 77, SLIDE - 5, 77, 5)):
            np.testing.assert_array_equal(r.read(y, x, h, w), _region(y, x, h, w))
    assert is_background(_region(5120, 5120, CUT, CUT), 255.0)          # noisy blank tiles
    assert not is_background(_region(3 * 512 - 200, 5 * 512, CUT, CUT), 255.0)


def test_uint16_slide_uses_its_own_intensity_range(tmp_path):
    """A dim 16-bit slide (values 300..320, one bright 'cell'): only the cell's tile is kept,
    and the tile keeps the raw 16-bit values."""
    from utils.prepare_unlabeled import main
    slide = np.full((3000, 3000), 300, np.uint16)
    slide += np.random.default_rng(0).integers(0, 20, slide.shape).astype(np.uint16)
    slide[1100:1200, 1100:1200] = 3000
    (tmp_path / "src" / "whole_slide").mkdir(parents=True)
    tifffile.imwrite(tmp_path / "src" / "whole_slide" / "s.tif", slide, tile=(256, 256),
                     compression="zlib")
    assert main(["--src", str(tmp_path / "src"), "--dst", str(tmp_path / "out"), "--tile", "1024"]) == 0
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv")
    assert list(manifest["name"]) == ["s_y001024_x001024.png"]
    np.testing.assert_array_equal(uio.read_image(tmp_path / "out" / "s_y001024_x001024.png")[..., 0],
                                  slide[1024:2048, 1024:2048])
