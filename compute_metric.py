"""Score segmentation label maps against ground truth with the NeurIPS 2022 challenge metric.

Same command line and output as the challenge's ``baseline/compute_metric.py``: one CSV per
threshold named ``<save_name>-<threshold>.csv`` with the columns of ``utils.metrics.RESULT_COLUMNS``,
and the mean/median F1 printed per threshold. The metric itself lives in ``utils/metrics.py``.

Example::

    python compute_metric.py -g data/cellseg/labels -s runs/predict/exp --gt_suffix _label.tiff \
        --seg_suffix _label.tiff -thre 0.5 0.75 0.9 -n tuning
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from utils.io import InputError, check_output_dir, one_line, read_label, write_table
from utils.metrics import evaluate_pair, results_to_frame, summarize

LOGGER = logging.getLogger("compute_metric")

DESCRIPTION = """\
Compute the NeurIPS 2022 cell segmentation challenge metric (F1 at IoU thresholds) for every file
in SEG_PATH ending with SEG_SUFFIX; its ground truth is the same name with SEG_SUFFIX replaced by
GT_SUFFIX in GT_PATH. Cells within 2 pixels of the border are removed first (unless
--count_bd_cells); images of 25,000,000 pixels or more are scored in 2000x2000 tiles, as the
challenge does. For parity with the challenge script, an image with no predicted cell reports
TP=FP=FN=0 (and precision=recall=F1=0) whatever its number of true cells. A file that cannot be
scored (unreadable, missing ground truth, shape mismatch) is listed at the end with its reason and
the exit status is 1. A ground-truth file without a prediction is not scored (as in the challenge's
script, which iterates the predictions), but named in a warning; --missing_as_zero scores it as an
empty prediction (F1 = 0)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-g", "--gt_path", default="labelsTr_GT", type=str,
                   help="folder of ground-truth label maps (default: %(default)s)")
    p.add_argument("-s", "--seg_path", required=True, type=str,
                   help="folder of segmentation label maps")
    p.add_argument("--gt_suffix", default=".tif", type=str,
                   help="suffix of ground-truth names (default: %(default)s)")
    p.add_argument("--seg_suffix", default="_label.tiff", type=str,
                   help="suffix of segmentation names (default: %(default)s)")
    p.add_argument("-thre", "--thresholds", nargs="+", default=[0.5], type=float,
                   help="IoU thresholds at which a cell counts as correct (default: 0.5)")
    p.add_argument("-o", "--output_path", default=None, type=str,
                   help="folder for the CSV files (default: SEG_PATH, or '.')")
    p.add_argument("-n", "--save_name", default="demo", type=str,
                   help="CSV name stem; writes <save_name>-<threshold>.csv (default: %(default)s)")
    p.add_argument("--count_bd_cells", action="store_true",
                   help="keep the cells within 2 pixels of the border (the challenge removes them)")
    p.add_argument("--missing_as_zero", action="store_true",
                   help="score a ground-truth file without a prediction as F1 = 0 (an empty "
                        "prediction); by default it is skipped, as the challenge's script does, "
                        "with a warning naming it")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _score_file(seg_file: Path | None, gt_file: Path, thresholds, count_bd_cells: bool):
    """Results per threshold; ``seg_file`` None scores an empty prediction (--missing_as_zero)."""
    gt = read_label(gt_file)
    seg = np.zeros_like(gt) if seg_file is None else read_label(seg_file)
    if seg.shape != gt.shape:
        raise InputError(seg_file, f"shape {seg.shape} does not match ground truth {gt_file.name} "
                                   f"shape {gt.shape}")
    return evaluate_pair(gt, seg, thresholds, count_bd_cells=count_bd_cells)


def missing_predictions(gt_dir: Path, gt_suffix: str, seg_suffix: str, names) -> list[str]:
    """The segmentation names that ground-truth files of ``gt_dir`` have but ``names`` lacks
    (the challenge's script, iterating the predictions, never sees them)."""
    if not gt_dir.is_dir() or not gt_suffix:
        return []
    have = set(names)
    wanted = (f.name[:-len(gt_suffix)] + seg_suffix for f in gt_dir.iterdir()
              if f.name.endswith(gt_suffix) and f.is_file())
    return sorted(n for n in wanted if n not in have)


def _warn_missing(missing: list[str], seg_dir: Path, as_zero: bool) -> None:
    shown = ", ".join(missing[:10]) + (f", ... ({len(missing) - 10} more)" if len(missing) > 10 else "")
    what = ("scored as F1 = 0 (--missing_as_zero)" if as_zero else
            "not scored, as in the challenge's script (the mean is over the predictions only; "
            "--missing_as_zero scores them as F1 = 0)")
    print(f"warning: {len(missing)} ground-truth file(s) have no prediction in {seg_dir}, {what}: "
          f"{shown}", file=sys.stderr)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    seg_dir, gt_dir = Path(args.seg_path), Path(args.gt_path)
    if not seg_dir.is_dir():
        print(f"error: segmentation folder {seg_dir} does not exist", file=sys.stderr)
        return 2
    if not args.seg_suffix:
        print("error: --seg_suffix must not be empty", file=sys.stderr)
        return 2
    out_dir = Path(args.output_path or args.seg_path or ".")
    try:
        check_output_dir(out_dir)  # before the scoring: a bad -o must not waste it
    except InputError as exc:
        print(f"error: -o {exc}", file=sys.stderr)
        return 2
    save_name = args.save_name[:-4] if args.save_name.endswith(".csv") else args.save_name
    thresholds = list(dict.fromkeys(args.thresholds))
    names = sorted(f.name for f in seg_dir.iterdir()
                   if f.name.endswith(args.seg_suffix) and f.is_file())
    if not names:
        print(f"error: no file ending with {args.seg_suffix!r} in {seg_dir}", file=sys.stderr)
        return 2
    missing = missing_predictions(gt_dir, args.gt_suffix, args.seg_suffix, names)
    if missing:
        _warn_missing(missing, seg_dir, args.missing_as_zero)
    absent = set(missing) if args.missing_as_zero else set()

    scored: list[str] = []
    per_threshold: dict[float, list] = {t: [] for t in thresholds}
    failed: list[tuple[str, str]] = []
    for name in tqdm(sorted([*names, *absent]), desc="scoring", unit="img"):
        gt_file = gt_dir / (name[:-len(args.seg_suffix)] + args.gt_suffix)
        try:
            results = _score_file(None if name in absent else seg_dir / name, gt_file, thresholds,
                                  args.count_bd_cells)
        except Exception as exc:  # noqa: BLE001 - whatever one file raises fails that file only
            LOGGER.debug("failed on %s", name, exc_info=True)
            failed.append((name, one_line(exc) or type(exc).__name__))
            continue
        scored.append(name)
        for t in thresholds:
            per_threshold[t].append(results[t])

    lost_output = False
    for t in thresholds:
        frame = results_to_frame(scored, per_threshold[t])
        csv_path = write_table(frame, out_dir / f"{save_name}-{t}.csv")
        lost_output |= csv_path != out_dir / f"{save_name}-{t}.csv"
        stats = summarize(per_threshold[t], "f1", decimals=4)  # over the rounded F1, as the challenge
        print(f"threshold: {t} mean F1 Score: {stats['mean']:.4f} median F1 Score: "
              f"{stats['median']:.4f} ({stats['n']} images) -> {csv_path}")
    if failed:
        print(f"failed cases: {len(failed)}")
        for name, reason in failed:
            print(f"  {name}: {reason}")
        return 1
    print("failed cases: none")
    return 1 if lost_output else 0


if __name__ == "__main__":
    sys.exit(main())
