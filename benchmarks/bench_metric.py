"""Time the challenge metric (utils/metrics.py) on real label maps against perturbed copies.

Each dsb2018 label map is scored against a prediction-like copy of itself (shifted by up to 2 px,
eroded by 1 px, 10% of the cells dropped, 10% split in two). Loading and perturbing are not timed.
The slow literal reference of tests/test_metrics.py is timed on a subset for the speed-up ratio,
and its numbers are checked against the fast ones.

    python -m benchmarks.bench_metric [DATA_DIR] [--limit N] [--ref-images N]
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from utils.io import InputError, read_label
from utils.metrics import evaluate_pair
from utils.perturb import perturb

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "dsb2018"


def load_reference():
    spec = importlib.util.spec_from_file_location("ref_metrics", REPO / "tests" / "test_metrics.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.reference_metric


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="?", default=str(DEFAULT_DATA), help="dataset folder with labels/")
    ap.add_argument("--limit", type=int, default=0, help="score only the first N label maps")
    ap.add_argument("--ref-images", type=int, default=20, help="images timed with the slow reference")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.5])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    label_dir = Path(args.data) / "labels"
    if not label_dir.is_dir():
        print(f"no label folder at {label_dir.resolve()}: nothing to benchmark")
        return 0
    files = sorted(label_dir.glob("*_label.tif*"))
    if args.limit:
        files = files[:args.limit]
    rng = np.random.default_rng(args.seed)
    pairs = []
    for f in files:
        try:
            gt = read_label(f)
        except InputError as exc:
            print(f"skip {exc}")
            continue
        pairs.append((f.name, gt, perturb(gt, rng)))
    if not pairs:
        print("no readable label map")
        return 0
    npix = sum(g.size for _, g, _ in pairs)
    ncells = sum(int(len(np.unique(g)) - 1) for _, g, _ in pairs)
    print(f"{len(pairs)} images, {npix / 1e6:.1f} Mpx, {ncells} gt cells, thresholds {args.thresholds}")

    evaluate_pair(pairs[0][1], pairs[0][2], args.thresholds)  # warm-up
    times, f1 = [], []
    for _, gt, pred in pairs:
        t0 = time.perf_counter()
        res = evaluate_pair(gt, pred, args.thresholds)
        times.append(time.perf_counter() - t0)
        f1.append(res[args.thresholds[0]].f1)
    total = sum(times)
    print(f"fast:      total {total:.3f} s, median {1e3 * statistics.median(times):.2f} ms/image, "
          f"{len(pairs) / total:.1f} images/s (mean F1@{args.thresholds[0]} {np.mean(f1):.4f})")

    k = min(args.ref_images, len(pairs))
    if k:
        reference_metric = load_reference()
        ref_times, worst = [], 0.0
        for _name, gt, pred in pairs[:k]:
            t0 = time.perf_counter()
            refs = {t: reference_metric(gt, pred, t) for t in args.thresholds}
            ref_times.append(time.perf_counter() - t0)
            fast = evaluate_pair(gt, pred, args.thresholds)
            for t in args.thresholds:
                for key in ("tp", "fp", "fn", "n_true", "n_pred", "f1", "dice"):
                    worst = max(worst, abs(getattr(fast[t], key) - refs[t][key]))
        fast_sub = sum(times[:k])
        print(f"reference: total {sum(ref_times):.3f} s on the first {k} images, median "
              f"{1e3 * statistics.median(ref_times):.2f} ms/image; max |fast - reference| = {worst:.2g}")
        print(f"speed-up:  {sum(ref_times) / fast_sub:.1f}x total, "
              f"{statistics.median(ref_times) / statistics.median(times[:k]):.1f}x median "
              f"(same {k} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
