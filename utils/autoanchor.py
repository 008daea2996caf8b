"""Anchors from the data: reproducible k-means + genetic refinement, and the BPR check.

The fitness is YOLOv5's: for each box, the ratio metric to an anchor is min over (w, h) of
min(r, 1/r) with r = box / anchor; a box's best metric is its maximum over anchors, counted when
above ``1 / anchor_t`` (the loss matches a box to an anchor under the same condition). BPR (best
possible recall) is the fraction of boxes with at least one matching anchor.

Everything random draws from ``np.random.default_rng(seed)``: the same boxes and seed give the
same anchors.

    python -m utils.autoanchor --data data/x.yaml --img 640 -n 3 [--seed 0]
"""
from __future__ import annotations

import argparse
import inspect
import logging

import numpy as np
from scipy.cluster.vq import kmeans

LOGGER = logging.getLogger(__name__)

BPR_MIN = 0.98          # YOLOv5: recompute anchors when the best possible recall is below this
MIN_BOX = 2.0           # YOLOv5: boxes under 2 pixels are left out of the anchor fit
MUT_PROB, MUT_SIGMA = 0.9, 0.1   # YOLOv5's genetic mutation probability and sigma
MUT_CLIP = (0.3, 3.0)   # YOLOv5's range of one mutation factor
MAX_FIT_BOXES = 50_000  # subsample (seeded) above this many boxes to bound the evolution's cost
KMEANS_ITER = 30        # YOLOv5's k-means restarts
# scipy >= 1.15 names kmeans' generator argument ``rng``; older releases call it ``seed``
_KMEANS_RNG = "rng" if "rng" in inspect.signature(kmeans).parameters else "seed"


def _ratio_metric(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """``(N, 2)`` boxes x ``(n, 2)`` anchors -> ``(N, n)`` min over w, h of min(r, 1/r)."""
    r = wh[:, None, :] / anchors[None, :, :]
    return np.minimum(r, 1.0 / r).min(2)


def anchor_bpr(wh, anchors, thr: float = 4.0) -> tuple[float, float]:
    """``(bpr, anchors_above_thr)``: fraction of boxes with a matching anchor, and the mean number
    of matching anchors per box. ``wh (N, 2)``, ``anchors (n, 2)`` pixels; ``thr`` = anchor_t."""
    wh = np.asarray(wh, np.float64).reshape(-1, 2)
    if not len(wh):
        return 1.0, 0.0
    x = _ratio_metric(wh, np.asarray(anchors, np.float64).reshape(-1, 2))
    return float((x.max(1) > 1.0 / thr).mean()), float((x > 1.0 / thr).sum(1).mean())


def anchor_fitness(wh: np.ndarray, anchors: np.ndarray, thr: float = 4.0) -> float:
    """YOLOv5's fitness: mean over boxes of the best ratio metric, counted when above 1 / thr."""
    best = _ratio_metric(wh, anchors).max(1)
    return float((best * (best > 1.0 / thr)).mean())


def _sort_by_area(k: np.ndarray) -> np.ndarray:
    return k[np.argsort(k.prod(1), kind="stable")]


def _initial_anchors(wh: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Seeded k-means on std-whitened wh; area quantiles if k-means finds fewer than n clusters."""
    s = wh.std(0)
    s[s == 0] = 1.0
    k = np.empty((0, 2))
    if len(np.unique(wh, axis=0)) >= n:
        k, _ = kmeans(wh / s, n, iter=KMEANS_ITER, **{_KMEANS_RNG: rng})
        k = k * s
    if len(k) != n:
        LOGGER.warning("k-means found %d of %d clusters; starting from area quantiles", len(k), n)
        order = wh[np.argsort(wh.prod(1), kind="stable")]
        k = order[np.linspace(0, len(order) - 1, n).round().astype(int)]
    return _sort_by_area(np.asarray(k, np.float64))


def kmean_anchors(wh, n: int = 3, thr: float = 4.0, gen: int = 1000, seed: int = 0) -> np.ndarray:
    """Anchors ``(n, 2)`` float32 pixels sorted by area, fitted to box sizes ``wh (N, 2)`` pixels
    (at the training image size): seeded k-means then ``gen`` generations of seeded mutation,
    keeping a mutation when it raises :func:`anchor_fitness`. Deterministic for a given seed."""
    rng = np.random.default_rng(seed)
    wh = np.asarray(wh, np.float64).reshape(-1, 2)
    small = (wh < MIN_BOX).any(1)
    if small.any():
        LOGGER.info("autoanchor: %d of %d boxes under %g pixels left out", small.sum(), len(wh), MIN_BOX)
    wh = wh[~small]
    if len(wh) < n:
        raise ValueError(f"autoanchor needs at least {n} boxes of {MIN_BOX}+ pixels, got {len(wh)}")
    if len(wh) > MAX_FIT_BOXES:
        wh = wh[rng.choice(len(wh), MAX_FIT_BOXES, replace=False)]
    k = _initial_anchors(wh, n, rng)
    best = anchor_fitness(wh, k, thr)
    for _ in range(gen):
        v = np.ones_like(k)
        while (v == 1).all():  # mutate until something changes
            mask = rng.random(k.shape) < MUT_PROB
            v = (mask * rng.random() * rng.standard_normal(k.shape) * MUT_SIGMA + 1).clip(*MUT_CLIP)
        cand = (k * v).clip(min=MIN_BOX)
        f = anchor_fitness(wh, cand, thr)
        if f > best:
            best, k = f, cand
    k = _sort_by_area(k)
    bpr, aat = anchor_bpr(wh, k, thr)
    LOGGER.info("autoanchor: n=%d thr=%g fitness %.4f BPR %.4f anchors/target %.2f anchors %s",
                n, thr, best, bpr, aat, np.round(k, 1).tolist())
    return k.astype(np.float32)


def check_anchors(model, wh, thr: float = 4.0, noautoanchor: bool = False, seed: int = 0,
                  gen: int = 1000) -> bool:
    """Check ``model.anchors`` against box sizes ``wh (N, 2)`` pixels; when BPR < 0.98 (and not
    ``noautoanchor``) fit new anchors and set them if they raise BPR. Returns True if changed."""
    m = getattr(model, "module", model)
    current = m.anchors.detach().cpu().numpy().reshape(-1, 2)
    bpr, aat = anchor_bpr(wh, current, thr)
    LOGGER.info("autoanchor: %.2f anchors/target, BPR %.4f with the current anchors", aat, bpr)
    if bpr >= BPR_MIN or noautoanchor or len(wh) == 0:
        if bpr < BPR_MIN:
            LOGGER.warning("autoanchor: BPR %.4f < %.2f but --noautoanchor: anchors kept", bpr, BPR_MIN)
        return False
    new = kmean_anchors(wh, n=len(current), thr=thr, gen=gen, seed=seed)
    new_bpr, _ = anchor_bpr(wh, new, thr)
    if new_bpr <= bpr:
        LOGGER.info("autoanchor: new anchors (BPR %.4f) are no better; kept the current ones", new_bpr)
        return False
    m.set_anchors(new)
    LOGGER.info("autoanchor: anchors replaced (BPR %.4f -> %.4f)", bpr, new_bpr)
    return True


def main(argv=None) -> np.ndarray:
    """CLI: fit anchors to a dataset's training boxes and print them with their BPR."""
    ap = argparse.ArgumentParser(prog="python -m utils.autoanchor", description=main.__doc__,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data", required=True, help="dataset YAML")
    ap.add_argument("--img", type=int, default=640,
                    help="training crop size: boxes are clipped to it (cells keep their native scale)")
    ap.add_argument("-n", type=int, default=3, help="number of anchors")
    ap.add_argument("--thr", type=float, default=4.0, help="anchor_t of the loss")
    ap.add_argument("--gen", type=int, default=1000, help="genetic generations")
    ap.add_argument("--seed", type=int, default=0, help="k-means and genetic search seed")
    ap.add_argument("--cache-dir", default="runs/cache", help="label/box cache folder (as training)")
    opt = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from utils.config import load_data_config
    from utils.datasplits import resolve_split
    from utils.label_cache import DatasetCache, dataset_boxes

    samples = resolve_split(load_data_config(opt.data), "train")
    wh = np.asarray(dataset_boxes(samples, DatasetCache(samples, opt.cache_dir)), np.float64).reshape(-1, 2)
    wh = wh.clip(max=opt.img)
    anchors = kmean_anchors(wh, n=opt.n, thr=opt.thr, gen=opt.gen, seed=opt.seed)
    bpr, aat = anchor_bpr(wh, anchors, opt.thr)
    flat = ", ".join(f"{w:.0f},{h:.0f}" for w, h in anchors)
    print(f"{len(wh)} boxes from {len(samples)} images; anchors (w,h px): [[{flat}]]")
    print(f"BPR {bpr:.4f}, anchors above threshold per box {aat:.2f} (anchor_t {opt.thr:g}, seed {opt.seed})")
    return anchors


if __name__ == "__main__":
    from utils.errors import exit_on_error
    exit_on_error(main)
