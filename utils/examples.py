"""The bundled example images of examples/ (the README's first command runs on them, offline).

    python -m utils.examples --out examples      # (re)generate them; deterministic

Four small images, one per kind of input the router sees:

- ``fl_cells.png``, ``bf_stained.jpg``: synthetic (utils/synthetic.py, fixed seeds): a cartoon of
  fluorescence and of stained brightfield microscopy;
- ``gs_phase.png``: real phase contrast, a 256 x 256 crop of one Usiigaci validation image
  (NIH/3T3 fibroblasts, Tsai et al. 2019, SoftwareX 9:230; MIT licence), held out from the
  recipe's validation runs (the shipped branches, retrained on everything, have seen it); the
  16-bit camera values scaled to 8 bits between their 0.5 and 99.5 percentiles. Written from
  ../shared/data when it is there (skipped with a warning otherwise): the synthetic
  phase-contrast cartoon it replaced looked like no real microscope image, so it showed nothing
  about whole cells;
- ``ihc_colon.png``: a crop of scikit-image's immunohistochemistry sample (colonic glands, DAB +
  haematoxylin; "no known copyright restrictions"), which ships inside the scikit-image package
  (``skimage.data.immunohistochemistry`` reads it without pooch or a network). Skipped with a
  warning if an installed scikit-image no longer ships it.

The written files are committed (about 140 KB together), so predict.py runs right after install.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from utils.io import read_image, write_image
from utils.synthetic import make_sample

LOGGER = logging.getLogger(__name__)

# The committed examples' folder (relative to the repository root).
EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
# name -> (modality, size (H, W) px, seed, cell size range px, channels) of the synthetic examples
SYNTHETIC = {
    "fl_cells.png": ("fl", (256, 256), 11, (12, 40), 1),
    "bf_stained.jpg": ("bf", (256, 256), 12, (14, 40), 3),
}
# name -> (image under ../shared/data, top-left corner and side (px) of the crop) of the real examples
REAL = {
    # the window of median F1 (0.571, the held-out routed weights of 9dd20f0) among the 256-px
    # windows (stride 128) of usi_set15 with at least 6 whole cells; the top-left window scored
    # 0.18 (a merged cluster), the best 0.91; the whole image 0.724
    "gs_phase.png": ("usiigaci/images/usi_set15.tif", (384, 256, 256)),
}
REAL_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_PERCENTILES = (0.5, 99.5)   # 16-bit -> 8-bit display range (Fiji's auto-contrast saturates 0.35%)
IHC_NAME = "ihc_colon.jpg"
# top-left corner and side (px) of the crop of skimage's 512x512 IHC image
IHC_CROP = (128, 128, 256)


def ihc_crop() -> np.ndarray | None:
    """The IHC crop ``(256, 256, 3) uint8`` RGB from scikit-image's bundled data, or None if not shipped."""
    try:
        from skimage.data import immunohistochemistry
        image = immunohistochemistry()
    except (ImportError, OSError, ValueError) as exc:  # e.g. a version that needs pooch
        LOGGER.warning("scikit-image's IHC sample unavailable offline (%s); skipped", exc)
        return None
    y, x, side = IHC_CROP
    return np.ascontiguousarray(image[y:y + side, x:x + side])


def real_crop(name: str, root=REAL_ROOT) -> np.ndarray | None:
    """The real example ``name`` of REAL as ``(side, side) uint8``, or None when ``root`` lacks it."""
    rel, (y, x, side) = REAL[name]
    path = Path(root) / rel
    if not path.is_file():
        LOGGER.warning("%s: %s not found (../shared/data absent); skipped", name, path)
        return None
    crop = read_image(path)[y:y + side, x:x + side, 0].astype(np.float64)  # single channel
    lo, hi = np.percentile(crop, REAL_PERCENTILES)
    return np.round(np.clip((crop - lo) / max(hi - lo, 1e-9), 0, 1) * 255).astype(np.uint8)


def write_examples(out_dir=EXAMPLES_DIR, real_root=REAL_ROOT) -> list[Path]:
    """Write the example images into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    paths = []
    for name, (modality, size, seed, size_range, channels) in SYNTHETIC.items():
        image, _ = make_sample(modality, size, seed=seed, size_range=size_range, channels=channels)
        write_image(out_dir / name, image)
        paths.append(out_dir / name)
    for name in REAL:
        crop = real_crop(name, real_root)
        if crop is not None:
            write_image(out_dir / name, crop)
            paths.append(out_dir / name)
    ihc = ihc_crop()
    if ihc is not None:
        write_image(out_dir / IHC_NAME, ihc)
        paths.append(out_dir / IHC_NAME)
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Write the bundled example images.")
    p.add_argument("--out", default=str(EXAMPLES_DIR), help="output folder")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    paths = write_examples(args.out)
    total_kb = sum(q.stat().st_size for q in paths) / 1024
    print(f"{len(paths)} example image(s) in {Path(args.out).resolve()} ({total_kb:.0f} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
