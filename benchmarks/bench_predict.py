"""Prediction speed on this machine: forward, NMS and post-processing per image, and a whole slide.

    python -m benchmarks.bench_predict                          # random-init AWF, 512 and 1024 px
    python -m benchmarks.bench_predict --ckpt best.pt --image examples/fl_cells.png
    python -m benchmarks.bench_predict --conf-thres 0.01        # random init, max_det detections
    python -m benchmarks.bench_predict --wsi                    # + 10,000 x 10,000 RGB (minutes)

1. For each ``--sizes`` S (default 512 and 1024): an S x S network image (a synthetic
   fluorescence image, or ``--image`` cropped / tiled to S x S) goes through the pipeline of
   utils/inference.py step by step: forward (padding, network, box decoding, sigmoid), NMS,
   post-processing (utils/watershed.py), and ``AWFSegmenter.segment`` end to end (total).
   Median milliseconds over ``--repeats`` runs after one warm-up, batch 1, for each ``--amp``
   policy side by side (default: fp32 in the default layout, ``--amp fp32`` (channels_last on a
   CPU) and utils.precision's auto choice for this machine).
2. ``--wsi``: ``AWFSegmenter.segment`` on a ``--wsi-size`` square RGB image (the synthetic
   1024 image tiled), i.e. the chunked path; wall time and peak RSS (``resource.getrusage``),
   measured in a child process per policy so that the RSS is that run's own.

Post-processing time grows with the number of detections: a random-init model keeps none at
the default threshold (use ``--conf-thres 0.01`` for a worst case with ``max_det`` boxes) and
only a trained model (``--ckpt``) gives representative figures. Results are printed and written
to benchmarks/out/bench_predict.json.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from models.awf import AWF
from models.loading import load_model
from utils.inference import AWFSegmenter, pad_to_stride
from utils.io import load_image, normalize_image
from utils.nms import non_max_suppression
from utils.precision import MODES, NCHW_FP32, benchmark_policy
from utils.routing import Overrides, load_routing
from utils.synthetic import make_sample
from utils.watershed import postprocess

REPO = Path(__file__).resolve().parents[1]

OUT_JSON = REPO / "benchmarks" / "out" / "bench_predict.json"
# Synthetic benchmark cells: largest extent range in pixels (nuclei-like at 40x)
CELL_SIZE_RANGE = (12, 40)
# The whole-slide image is this synthetic tile repeated (px per side)
WSI_TILE = 1024
NOTE = ("post-processing time depends on the number of detections (n_det): "
        "figures from a random-init model are not representative of a trained one")


def timed(fn, repeats: int, warmup: int = 1) -> tuple[float, object]:
    """(median wall time of ``fn()`` in ms, the last result)."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), result


def bench_image(size: int, image_path: str | None = None) -> np.ndarray:
    """A ``(size, size, 3) uint8`` network image: ``image_path`` cropped / tiled, or synthetic fl."""
    if image_path:
        img = load_image(image_path)
        reps = (-(-size // img.shape[0]), -(-size // img.shape[1]), 1)
        return np.ascontiguousarray(np.tile(img, reps)[:size, :size])
    raw, _ = make_sample("fl", (size, size), seed=size, size_range=CELL_SIZE_RANGE, channels=3)
    return normalize_image(raw)


def forward(seg: AWFSegmenter, x: torch.Tensor):
    """The pipeline's forward step under the segmenter's precision: ``x (1, 3, H, W)`` ->
    (decoded (1, N, 5), fg (H, W), height (H, W)), fp32 outputs."""
    with torch.no_grad():
        xp, (h, w) = pad_to_stride(x)
        with seg.precision.autocast():
            out = seg.model(seg.precision.input(xp))
            pred = seg.model.decode(out["det"])
        return (pred.float(), torch.sigmoid(out["fg"][0, 0, :h, :w].float()),
                out["height"][0, 0, :h, :w].float())


def bench_size(seg: AWFSegmenter, image: np.ndarray, repeats: int) -> dict:
    """Median ms of forward / NMS / post-processing / segment() on one network image."""
    p, d = seg.params, seg.params.detection
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    t_fwd, (pred, fg, height) = timed(lambda: forward(seg, x), repeats)
    t_nms, det = timed(lambda: non_max_suppression(pred, d.conf_thres, d.iou_thres, d.max_det)[0],
                       repeats)
    fg_np, height_np, det_np = fg.numpy(), height.numpy(), det.numpy()
    t_post, label = timed(lambda: postprocess(det_np[:, :4], det_np[:, 4], fg_np, height_np, p.post),
                          repeats)
    t_total, _ = timed(lambda: seg.segment(image), repeats)
    return {"size": image.shape[0], "forward_ms": round(t_fwd, 1), "nms_ms": round(t_nms, 1),
            "post_ms": round(t_post, 1), "total_ms": round(t_total, 1), "n_det": len(det),
            "n_cells": int(label.max(initial=0))}


def build_model(ckpt: str | None):
    """The checkpoint's model, or a random-init AWF (seeded) when ``ckpt`` is None."""
    if ckpt:
        return load_model(ckpt, kind="awf")
    torch.manual_seed(0)
    return AWF().eval()


def segmenter(args, amp: str) -> AWFSegmenter:
    """The AWF pipeline with data/routing.yaml's fl settings, ``--conf-thres`` overriding, at scale
    1: one pass per image (the size rule off; where it asks for a second pass, that pass costs
    what one pass costs at its size)."""
    params = load_routing().inference_params("fl", Overrides(conf_thres=args.conf_thres,
                                                             scale=1.0))
    return AWFSegmenter(build_model(args.ckpt), "cpu", params, precision=benchmark_policy(amp, "cpu"))


def wsi_child(args) -> None:
    """Run in a subprocess: segment one ``wsi_size``^2 RGB image, print JSON (seconds, peak RSS)."""
    torch.set_num_threads(args.threads)
    seg = segmenter(args, args.amp[0])
    tile = bench_image(WSI_TILE, args.image)
    reps = -(-args.wsi_size // WSI_TILE)
    image = np.ascontiguousarray(np.tile(tile, (reps, reps, 1))[:args.wsi_size, :args.wsi_size])
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    t0 = time.perf_counter()
    result = seg.segment(image)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"size": args.wsi_size, "seconds": round(seconds, 1),
                      "peak_rss_gib": round(peak, 2), "rss_before_segment_gib": round(rss_before, 2),
                      "n_det": result.n_det, "n_cells": result.n_cells,
                      "label_dtype": str(result.label.dtype)}))


def run_wsi(args, amp: str) -> dict:
    """The whole-slide measurement under ``amp`` in a fresh interpreter (its own peak RSS)."""
    cmd = [sys.executable, "-m", "benchmarks.bench_predict", "--wsi-child", "--wsi-size", str(args.wsi_size),
           "--threads", str(args.threads), "--conf-thres", str(args.conf_thres), "--amp", amp]
    cmd += ["--ckpt", args.ckpt] if args.ckpt else []
    cmd += ["--image", args.image] if args.image else []
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"whole-slide run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", default=None, help="AWF checkpoint (default: random init)")
    p.add_argument("--image", default=None, help="real image, cropped/tiled to each size")
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="square sizes (px)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    p.add_argument("--conf-thres", type=float, default=load_routing().detection["fl"].conf_thres,
                   help="detection threshold (default: data/routing.yaml's fl value)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    p.add_argument("--amp", nargs="+", default=[NCHW_FP32, "fp32", "auto"],
                   choices=(*MODES, NCHW_FP32),
                   help=f"precision policies to compare (utils.precision; {NCHW_FP32}: fp32 "
                        "in the default memory layout, the baseline of channels_last)")
    p.add_argument("--wsi", action="store_true", help="also the whole-slide run (minutes)")
    p.add_argument("--wsi-size", type=int, default=10_000, help="whole-slide side (px)")
    p.add_argument("--wsi-child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.wsi_child:
        wsi_child(args)
        return 0
    torch.set_num_threads(args.threads)
    policies = {amp: benchmark_policy(amp, "cpu").describe() for amp in args.amp}
    print(f"model: {args.ckpt or 'random init'}; image: {args.image or 'synthetic fl'}; "
          f"CPU threads: {args.threads}; conf_thres {args.conf_thres}; median of {args.repeats}")
    print(f"note: {NOTE}")
    for amp, what in policies.items():
        print(f"--amp {amp}: {what}")
    print(f"{'amp':>9} {'size':>6} {'forward':>9} {'NMS':>7} {'post':>8} {'total':>9} {'n_det':>6} "
          f"{'cells':>6}  (ms)")
    results = {"model": args.ckpt or "random init", "image": args.image or "synthetic fl",
               "threads": args.threads, "conf_thres": args.conf_thres, "note": NOTE,
               "policies": policies, "sizes": [], "wsi": []}
    segs = {amp: segmenter(args, amp) for amp in args.amp}
    for size in args.sizes:
        image = bench_image(size, args.image)
        for amp, seg in segs.items():
            r = {"amp": amp, **bench_size(seg, image, args.repeats)}
            results["sizes"].append(r)
            print(f"{amp:>9} {size:>6} {r['forward_ms']:>9} {r['nms_ms']:>7} {r['post_ms']:>8} "
                  f"{r['total_ms']:>9} {r['n_det']:>6} {r['n_cells']:>6}", flush=True)
    for amp in args.amp if args.wsi else []:
        w = {"amp": amp, **run_wsi(args, amp)}
        results["wsi"].append(w)
        print(f"--amp {amp}: whole slide {w['size']}^2 RGB: {w['seconds']} s, peak RSS "
              f"{w['peak_rss_gib']} GiB (image built: {w['rss_before_segment_gib']} GiB), "
              f"{w['n_cells']} cells", flush=True)
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    OUT_JSON.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
