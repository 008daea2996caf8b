"""Check compute_metric.py against the challenge's own script, column by column.

The challenge's ``baseline/compute_metric.py`` (github.com/JunMa11/NeurIPS-CellSeg; it needs
numba) is not shipped here: pass its path. Both command lines score the same generated folder
and their CSVs are compared per image and per threshold. Cases: every label map of DATA_DIR
against a prediction-like copy (utils.perturb.perturb), plus edge cases: an empty
prediction, an empty ground truth, non-sequential uint16 ids, and a 5200 x 5000 mosaic of real
label maps that takes the challenge's tiled (2000 x 2000) path.

    python -m benchmarks.check_metric_parity --reference PATH/compute_metric.py [DATA_DIR]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from benchmarks.bench_metric import DEFAULT_DATA
from utils.io import read_label
from utils.perturb import perturb

REPO = Path(__file__).resolve().parents[1]
THRESHOLDS = ("0.5", "0.75", "0.9")
TOLERANCE = 5e-5  # "to the 4th decimal": both scripts round to 4 decimals
MOSAIC_SHAPE = (5200, 5000)  # > 25,000,000 pixels and not a multiple of 2000: the tiled path


def _mosaic(labels: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Tile label maps row by row into one ``shape`` int32 map with unique ids."""
    out = np.zeros(shape, np.int32)
    y = x = row_h = 0
    offset = 0
    for lab in labels:
        h, w = lab.shape
        if x + w > shape[1]:
            y, x, row_h = y + row_h, 0, 0
        if y + h > shape[0]:
            break
        out[y:y + h, x:x + w] = np.where(lab > 0, lab.astype(np.int64) + offset, 0)
        offset += int(lab.max())
        x, row_h = x + w, max(row_h, h)
    return out


def write_cases(labels: dict[str, np.ndarray], gt_dir: Path, seg_dir: Path, seed: int) -> int:
    """Write ground truth and prediction pairs as NAME_label.tiff; returns the number of pairs."""
    rng = np.random.default_rng(seed)
    gt_dir.mkdir(parents=True)
    seg_dir.mkdir(parents=True)
    pairs = {name: (lab, perturb(lab, rng)) for name, lab in labels.items()}
    first = next(iter(labels.values()))
    pairs["edge_empty_pred"] = (first, np.zeros_like(first))
    pairs["edge_empty_gt"] = (np.zeros_like(first), perturb(first, rng))
    lut = np.concatenate([[0], rng.permutation(60000)[: int(first.max())] + 1]).astype(np.uint16)
    pairs["edge_sparse_ids"] = (lut[first], perturb(first, rng).astype(np.uint16))
    big = _mosaic(list(labels.values()), MOSAIC_SHAPE)
    pairs["edge_tiled_mosaic"] = (big, perturb(big, rng))
    for name, (gt, seg) in pairs.items():
        tifffile.imwrite(gt_dir / f"{name}_label.tiff", gt)
        tifffile.imwrite(seg_dir / f"{name}_label.tiff", seg)
    return len(pairs)


def run_metric(script: Path, gt_dir: Path, seg_dir: Path, out: Path, name: str) -> None:
    cmd = [sys.executable, str(script), "-g", str(gt_dir), "-s", str(seg_dir), "--gt_suffix",
           "_label.tiff", "--seg_suffix", "_label.tiff", "-thre", *THRESHOLDS, "-o", str(out),
           "-n", name]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, text=True)


def compare(out: Path) -> float:
    """Largest absolute difference over all numeric columns, images and thresholds (printed)."""
    worst = 0.0
    for t in THRESHOLDS:
        ours = pd.read_csv(out / f"ours-{t}.csv").set_index("names").sort_index()
        ref = pd.read_csv(out / f"ref-{t}.csv").set_index("names").sort_index()
        if list(ours.index) != list(ref.index):
            raise SystemExit(f"threshold {t}: the two scripts scored different images")
        diff = (ours[ref.columns].astype(float) - ref.astype(float)).abs()
        worst = max(worst, float(diff.max().max()))
        print(f"threshold {t}: {len(ref)} images, mean F1 ours {ours['F1'].mean():.4f} "
              f"challenge {ref['F1'].mean():.4f}, max |diff| per column: "
              + ", ".join(f"{c} {v:.1g}" for c, v in diff.max().items()))
        bad = diff.max(axis=1) > TOLERANCE
        if bad.any():
            print("  differing images:", ", ".join(diff.index[bad][:10]))
    return worst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="?", default=str(DEFAULT_DATA), help="dataset folder with labels/")
    ap.add_argument("--reference", required=True, help="the challenge's compute_metric.py")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N label maps")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    files = sorted((Path(args.data) / "labels").glob("*_label.tif*"))[: args.limit or None]
    if not files:
        print(f"no label maps under {Path(args.data).resolve()}/labels: nothing to check")
        return 0
    labels = {f.name.split("_label.")[0]: read_label(f).astype(np.int32) for f in files}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n = write_cases(labels, tmp / "gt", tmp / "seg", args.seed)
        run_metric(REPO / "compute_metric.py", tmp / "gt", tmp / "seg", tmp, "ours")
        run_metric(Path(args.reference).resolve(), tmp / "gt", tmp / "seg", tmp, "ref")
        worst = compare(tmp)
    ok = worst <= TOLERANCE
    print(f"{n} image pairs x {len(THRESHOLDS)} thresholds: max |difference| {worst:.2g} -> "
          f"{'parity to the 4th decimal' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
