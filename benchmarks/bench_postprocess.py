"""Timing of the AWF post-processing and of chunked whole-slide segmentation (CPU).

    python -m benchmarks.bench_postprocess            # < 2 min on 2 cores
    python -m benchmarks.bench_postprocess --slide 4000 --repeats 3   # quicker

1. ``postprocess`` on realistic network outputs (blurred foreground probability, noisy height
   map, jittered boxes with duplicates, after NMS as in the pipeline): median ms for 512 x 512
   (150 cells) and 1024 x 1024 (500 cells), with the fraction of cells recovered at IoU > 0.5.
2. ``segment_chunked`` on a synthetic slide (default 10,000 x 10,000 RGB) with a cheap
   threshold-based ``segment_fn``: wall time and peak RSS (``resource.getrusage``).
"""
from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from scipy import ndimage as ndi


from tests.test_watershed import ideal_outputs, matched_fraction, synthetic_cells
from utils.nms import merge_detections
from utils.tiling import segment_chunked
from utils.watershed import postprocess


def realistic_outputs(shape, n_cells, seed=0):
    """GT label and imperfect network outputs for it: (gt, boxes, scores, fg, height)."""
    rng = np.random.default_rng(seed)
    gt = synthetic_cells(shape, n_cells, r_range=(10, 22), min_dist=24, seed=seed)
    _, boxes, _, fg, height = ideal_outputs(gt)
    fg = np.clip(ndi.gaussian_filter(fg, 1.0) + rng.normal(0, 0.05, shape), 0, 1).astype(np.float32)
    height = (ndi.gaussian_filter(height, 1.0) + rng.normal(0, 0.05, shape)).astype(np.float32)
    boxes = boxes + rng.normal(0, 1.5, boxes.shape).astype(np.float32)
    scores = rng.uniform(0.3, 1.0, len(boxes)).astype(np.float32)
    dup = rng.random(len(boxes)) < 0.3  # shifted duplicates, as a detector emits before NMS
    boxes = np.r_[boxes, boxes[dup] + rng.normal(0, 3, (dup.sum(), 4))].astype(np.float32)
    scores = np.r_[scores, scores[dup] * 0.8].astype(np.float32)
    dets = merge_detections([torch.from_numpy(np.c_[boxes, scores])], iou_thres=0.45)
    return gt, dets[:, :4].numpy(), dets[:, 4].numpy(), fg, height


def bench_postprocess(repeats: int) -> None:
    for shape, n_cells in (((512, 512), 150), ((1024, 1024), 500)):
        gt, boxes, scores, fg, height = realistic_outputs(shape, n_cells)
        wall, cpu = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            label = postprocess(boxes, scores, fg, height)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        frac, extra = matched_fraction(gt, label)
        print(f"postprocess {shape[0]}x{shape[1]}, {gt.max()} cells, {len(boxes)} boxes: "
              f"median {1000 * np.median(wall):.1f} ms wall (min {1000 * min(wall):.1f}), "
              f"{1000 * np.median(cpu):.1f} ms CPU | recovered {frac:.3f}, unmatched {extra}")


def synthetic_slide(size: int, spacing: int = 40, seed: int = 0) -> np.ndarray:
    """``(size, size, 3) uint8`` slide: bright discs (radius 6-14) on a jittered grid."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 20, np.uint8)
    centres = np.mgrid[spacing // 2:size:spacing, spacing // 2:size:spacing].reshape(2, -1).T
    centres = centres + rng.integers(-5, 6, centres.shape)
    for (y, x), r in zip(centres, rng.integers(6, 15, len(centres))):
        cv2.circle(img, (int(x), int(y)), int(r), (200, 200, 200), -1)
    return img


def threshold_segment(sub: np.ndarray) -> np.ndarray:
    """Cheap stand-in for a model: connected components of the bright pixels."""
    return ndi.label(sub[..., 0] > 128)[0]


def current_rss_mib() -> float:
    """Resident set size now (Linux /proc; falls back to the peak so far elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_chunked(size: int) -> None:
    slide = synthetic_slide(size)
    rss_before = current_rss_mib()
    t0 = time.perf_counter()
    label = segment_chunked(slide, threshold_segment, chunk=2048, margin=256)
    elapsed = time.perf_counter() - t0
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    n = int(label.max())
    print(f"segment_chunked {size}x{size}: {elapsed:.1f} s, {n} instances, "
          f"{1e3 * elapsed / (size * size / 1e6):.0f} ms/Mpx | peak RSS {rss_peak:.0f} MiB "
          f"(RSS before the call {rss_before:.0f} MiB incl. the {slide.nbytes / 2**20:.0f} MiB image; "
          f"output label {label.nbytes / 2**20:.0f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="postprocess runs per size")
    parser.add_argument("--slide", type=int, default=10_000, help="slide side, pixels (0: skip)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bench_postprocess(args.repeats)
    if args.slide:
        bench_chunked(args.slide)


if __name__ == "__main__":
    main()
