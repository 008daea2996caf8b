"""The bundled example images of examples/ (the README's first command runs on them, offline).

    python -m utils.examples --out examples      # (re)generate them; deterministic

Four small images, one per kind of input the router sees:

- ``fl_cells.png``, ``bf_stained.png``, ``gs_phase.png``: synthetic (utils/synthetic.py, fixed
  seeds): a cartoon of fluorescence, stained brightfield and phase-contrast microscopy;
- ``ihc_colon.png``: a crop of scikit-image's immunohistochemistry sample (colonic glands, DAB +
  haematoxylin; "no known copyright restrictions"), which ships inside the scikit-image package
  (``skimage.data.immunohistochemistry`` reads it without pooch or a network). Skipped with a
  warning if an installed scikit-image no longer ships it.

The generated files are committed (about 140 KB together), so predict.py runs right after install.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from utils.io import write_image
from utils.synthetic import make_sample

LOGGER = logging.getLogger(__name__)

# The committed examples' folder (relative to the repository root).
EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
# name -> (modality, size (H, W) px, seed, cell size range px, channels) of the synthetic examples
SYNTHETIC = {
    "fl_cells.png": ("fl", (256, 256), 11, (12, 40), 1),
    "bf_stained.jpg": ("bf", (256, 256), 12, (14, 40), 3),
    "gs_phase.png": ("gs", (256, 256), 13, (12, 50), 1),
}
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


def write_examples(out_dir=EXAMPLES_DIR) -> list[Path]:
    """Write the example images into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    paths = []
    for name, (modality, size, seed, size_range, channels) in SYNTHETIC.items():
        image, _ = make_sample(modality, size, seed=seed, size_range=size_range, channels=channels)
        write_image(out_dir / name, image)
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
