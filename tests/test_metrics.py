"""Tests of utils/metrics.py and compute_metric.py (the NeurIPS 2022 challenge metric).

``reference_*`` below is a deliberately slow, literal implementation of the challenge's definition
(per-label loops, dense IoU matrix, Hungarian on the full matrix, explicit zero padding for tiles);
the fast implementation must agree with it to 1e-4. benchmarks/bench_metric.py reuses it.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from utils.metrics import (RESULT_COLUMNS, MatchResult, dice_score, evaluate_pair,
                           match_instances, remove_boundary_cells, results_to_frame, sparse_iou,
                           summarize)

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------------
# slow reference (the challenge's definition, written out literally)


def reference_remove_border(label, width=2):
    """Zero, one id at a time, the values of ``label * band`` except the first (smallest) one."""
    lab = np.array(label, dtype=np.int64)
    h, w = lab.shape
    band = np.ones((h, w), bool)
    band[width:h - width, width:w - width] = False
    # np.unique(lab * band), without the full-size product: off the band the product is 0
    values = np.unique(np.concatenate([lab[band], np.zeros(int(not band.all()), np.int64)]))
    for i in values[1:]:
        lab[lab == i] = 0
    return reference_relabel(lab)


def reference_relabel(label):
    out = np.zeros(label.shape, np.int64)
    for new, old in enumerate(np.unique(label[label != 0]), start=1):
        out[label == old] = new
    return out


def reference_iou(gt, pred):
    """Dense (n_true, n_pred) IoU matrix built one gt cell at a time."""
    nt, npred = int(gt.max()), int(pred.max())
    overlap = np.zeros((nt + 1, npred + 1), np.int64)
    for i in range(nt + 1):
        overlap[i] = np.bincount(pred[gt == i], minlength=npred + 1)
    area_t = overlap.sum(axis=1, keepdims=True)
    area_p = overlap.sum(axis=0, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = overlap / (area_t + area_p - overlap)
    iou[np.isnan(iou)] = 0.0
    return iou[1:, 1:]


def reference_counts(gt, pred, threshold, count_bd_cells=False):
    g = reference_relabel(gt) if count_bd_cells else reference_remove_border(gt)
    p = reference_relabel(pred) if count_bd_cells else reference_remove_border(pred)
    nt, npred = int(g.max()), int(p.max())
    if npred == 0:
        return nt, 0, 0, 0, 0
    iou = reference_iou(g, p)
    if nt == 0:
        tp = 0
    else:
        n_min = min(iou.shape)
        cost = -(iou >= threshold).astype(float) - iou / (2 * n_min)
        a, b = linear_sum_assignment(cost)
        tp = int((iou[a, b] >= threshold).sum())
    return nt, npred, tp, npred - tp, nt - tp


def reference_dice(gt, pred):
    g, s = gt > 0, pred > 0
    if g.sum() == 0:
        return 1.0 if s.sum() == 0 else 0.0
    return 2 * (g & s).sum() / (g.sum() + s.sum())


def reference_metric(gt, pred, threshold=0.5, count_bd_cells=False):
    """dict with the challenge's numbers for one image (tiles of 2000 from 25,000,000 px)."""
    dice = reference_dice(gt, pred)
    if gt.size < 25_000_000:
        nt, npred, tp, fp, fn = reference_counts(gt, pred, threshold, count_bd_cells)
    else:
        h, w = gt.shape
        hp, wp = -(-h // 2000) * 2000, -(-w // 2000) * 2000
        gp = np.zeros((hp, wp), gt.dtype)
        pp = np.zeros((hp, wp), pred.dtype)
        gp[:h, :w], pp[:h, :w] = gt, pred
        nt = npred = tp = fp = fn = 0
        for y in range(0, hp, 2000):
            for x in range(0, wp, 2000):
                c = reference_counts(gp[y:y + 2000, x:x + 2000], pp[y:y + 2000, x:x + 2000],
                                     threshold, count_bd_cells)
                nt, npred, tp, fp, fn = (a + b for a, b in zip((nt, npred, tp, fp, fn), c))
    if tp == 0:
        prec = rec = f1 = 0.0
    else:
        prec, rec = tp / npred, tp / nt
        f1 = 2 * prec * rec / (prec + rec)
    return dict(n_true=nt, n_pred=npred, tp=tp, fp=fp, fn=fn, precision=prec, recall=rec, f1=f1,
                dice=dice)


def assert_matches_reference(res: MatchResult, ref: dict):
    for k in ("n_true", "n_pred", "tp", "fp", "fn"):
        assert getattr(res, k) == ref[k], (k, res, ref)
    for k in ("precision", "recall", "f1", "dice"):
        assert abs(getattr(res, k) - ref[k]) < 1e-4, (k, res, ref)


# ----------------------------------------------------------------------------------------------
# synthetic label maps


def random_labels(rng, shape=(64, 80), n=25, dtype=np.uint16, max_id=None):
    """Random ellipses painted in order (later ones occlude), ids optionally non-consecutive."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    lab = np.zeros(shape, np.int64)
    ids = (np.unique(rng.integers(1, max_id, n)) if max_id else np.arange(1, n + 1))
    for i in ids:
        cy, cx = rng.uniform(-3, h + 3), rng.uniform(-3, w + 3)
        ry, rx = rng.uniform(1.5, 9), rng.uniform(1.5, 9)
        lab[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = i
    return lab.astype(dtype)


def perturb(rng, lab):
    """Prediction-like copy: shifted, eroded, some cells dropped, some split, some merged."""
    out = np.roll(lab.astype(np.int64), tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
    edge = ndimage.grey_dilation(out, size=3) != ndimage.grey_erosion(out, size=3)
    out[edge & (rng.random(out.shape) < 0.5)] = 0
    ids = np.unique(out)[1:]
    if ids.size:
        out[np.isin(out, rng.choice(ids, max(1, ids.size // 8)))] = 0
        nxt = int(out.max()) + 1
        for i in rng.choice(ids, max(1, ids.size // 6)):
            ys, xs = np.nonzero(out == i)
            if xs.size > 3:
                half = xs > np.median(xs)
                out[ys[half], xs[half]] = nxt
                nxt += 1
        if ids.size > 2:
            a, b = rng.choice(ids, 2, replace=False)
            out[out == a] = b
    # junk detections
    for _ in range(rng.integers(0, 4)):
        y, x = rng.integers(0, out.shape[0] - 3), rng.integers(0, out.shape[1] - 3)
        out[y:y + 3, x:x + 3] = out.max() + 1
    return out.astype(lab.dtype)


# ----------------------------------------------------------------------------------------------
# remove_boundary_cells


def test_remove_boundary_cells_width_2():
    lab = np.zeros((12, 12), np.uint16)
    lab[0, 5] = 3  # on the border
    lab[1, 8:10] = 4  # within 2 px of the top
    lab[5:7, 2:4] = 9  # first column outside the band: kept
    lab[5:7, 10] = 11  # within 2 px of the right (cols 10, 11 are the band)
    lab[9, 6] = 20  # row 9 is outside the bottom band (rows 10, 11): kept
    lab[10, 2] = 21  # in the bottom band
    lab[6:8, 5:8] = 7  # interior, id between kept ones
    out = remove_boundary_cells(lab)
    assert out.dtype == np.int32 and out.shape == lab.shape
    # kept ids 7 < 9 < 20 become 1, 2, 3 (order preserved)
    expected = np.zeros_like(out)
    expected[5:7, 2:4] = 2
    expected[6:8, 5:8] = 1
    expected[9, 6] = 3
    np.testing.assert_array_equal(out, expected)
    assert lab[0, 5] == 3  # input untouched


def test_remove_boundary_cells_nonconsecutive_and_dtypes():
    for dtype, big in ((np.int16, 32767), (np.uint16, 65535), (np.int32, 2_000_000_000)):
        lab = np.zeros((20, 20), dtype)
        lab[5:8, 5:8] = big
        lab[10:12, 10:15] = 17
        lab[0:4, 0:4] = 5
        out = remove_boundary_cells(lab)
        assert sorted(np.unique(out)) == [0, 1, 2]
        assert (out[10:12, 10:15] == 1).all() and (out[5:8, 5:8] == 2).all()
        assert out[0:4, 0:4].max() == 0


# ----------------------------------------------------------------------------------------------
# hand-computed cases


def square_cells(shape, boxes, dtype=np.uint16):
    lab = np.zeros(shape, dtype)
    for i, (y0, y1, x0, x1) in boxes.items():
        lab[y0:y1, x0:x1] = i
    return lab


def test_perfect_match_and_border_cells():
    # 2 interior cells, 1 cell touching the border in both gt and pred.
    gt = square_cells((30, 30), {1: (5, 10, 5, 10), 2: (15, 20, 15, 22), 3: (0, 4, 20, 25)})
    pred = square_cells((30, 30), {4: (5, 10, 5, 10), 8: (15, 20, 15, 22), 2: (1, 4, 20, 25)})
    r = match_instances(gt, pred)
    assert (r.n_true, r.n_pred, r.tp, r.fp, r.fn) == (2, 2, 2, 0, 0)
    assert r.precision == r.recall == r.f1 == 1.0
    # dice before removal: |G| = 25 + 35 + 20, |S| = 25 + 35 + 15, overlap 75
    assert r.dice == pytest.approx(2 * 75 / (80 + 75))
    rb = match_instances(gt, pred, count_bd_cells=True)
    # border cell: gt 20 px, pred 15 px inside it -> IoU 0.75 -> matched too
    assert (rb.n_true, rb.n_pred, rb.tp, rb.fp, rb.fn) == (3, 3, 3, 0, 0)


def test_border_cell_only_in_prediction_is_removed_separately():
    gt = square_cells((30, 30), {1: (3, 8, 3, 8)})  # gt cell starts at row 3: kept
    pred = square_cells((30, 30), {1: (1, 8, 3, 8)})  # pred reaches row 1: removed
    r = match_instances(gt, pred)
    assert (r.n_true, r.n_pred, r.tp, r.fp, r.fn) == (1, 0, 0, 0, 0)  # no prediction left
    rb = match_instances(gt, pred, count_bd_cells=True)
    assert (rb.n_true, rb.n_pred, rb.tp) == (1, 1, 1)  # IoU 25/35


def test_empty_prediction_parity():
    gt = square_cells((30, 30), {1: (5, 10, 5, 10), 2: (15, 20, 15, 20)})
    r = match_instances(gt, np.zeros_like(gt))
    assert (r.n_true, r.n_pred, r.tp, r.fp, r.fn) == (2, 0, 0, 0, 0)  # FN=0: challenge parity
    assert r.precision == r.recall == r.f1 == r.dice == 0.0


def test_empty_gt():
    pred = square_cells((30, 30), {1: (5, 10, 5, 10), 2: (15, 20, 15, 20)})
    r = match_instances(np.zeros_like(pred), pred)
    assert (r.n_true, r.n_pred, r.tp, r.fp, r.fn) == (0, 2, 0, 2, 0)
    assert r.f1 == 0.0 and r.dice == 0.0
    both = match_instances(np.zeros_like(pred), np.zeros_like(pred))
    assert (both.tp, both.fp, both.fn, both.f1, both.dice) == (0, 0, 0, 0.0, 1.0)


def test_dice_conventions():
    z = np.zeros((5, 5), np.uint8)
    o = np.ones((5, 5), np.uint8)
    assert dice_score(z, z) == 1.0
    assert dice_score(z, o) == 0.0
    assert dice_score(o, z) == 0.0
    assert dice_score(o, o) == 1.0


def test_one_prediction_covering_two_cells():
    # two 10-px gt cells, one 20-px prediction covering both: IoU 0.5 with each
    gt = square_cells((20, 20), {1: (5, 7, 5, 10), 2: (7, 9, 5, 10)})
    pred = square_cells((20, 20), {1: (5, 9, 5, 10)})
    r = match_instances(gt, pred, 0.5)
    assert (r.n_true, r.n_pred, r.tp, r.fp, r.fn) == (2, 1, 1, 0, 1)
    assert r.precision == 1.0 and r.recall == 0.5 and r.f1 == pytest.approx(2 / 3)
    r = match_instances(gt, pred, 0.51)
    assert (r.tp, r.fp, r.fn, r.f1) == (0, 1, 2, 0.0)


def test_iou_exactly_at_threshold_and_split_cell():
    # gt 8 px, prediction 4 px inside it: IoU exactly 0.5 -> counted at t=0.5
    gt = square_cells((20, 20), {1: (5, 7, 5, 9)})
    pred = square_cells((20, 20), {1: (5, 7, 5, 7)})
    assert match_instances(gt, pred, 0.5).tp == 1
    assert match_instances(gt, pred, 0.5 + 1e-9).tp == 0
    # gt split in two halves by the prediction: both pairs at IoU 0.5, only one can be matched
    pred2 = square_cells((20, 20), {1: (5, 7, 5, 7), 2: (5, 7, 7, 9)})
    r = match_instances(gt, pred2, 0.5)
    assert (r.n_true, r.n_pred, r.tp, r.fp, r.fn) == (1, 2, 1, 1, 0)


def test_low_threshold_needs_real_assignment():
    # a chain a-b-c where greedy would match 1 pair but the assignment finds 2
    gt = square_cells((30, 30), {1: (5, 10, 5, 10), 2: (5, 10, 10, 15)})
    pred = square_cells((30, 30), {1: (5, 10, 7, 13), 2: (5, 10, 13, 17)})
    ref = reference_metric(gt, pred, 0.2)
    r = match_instances(gt, pred, 0.2)
    assert r.tp == 2
    assert_matches_reference(r, ref)
    assert match_instances(gt, pred, 0.0).tp == 2  # every pair passes IoU >= 0


def test_nonconsecutive_ids_int16_uint16():
    gt = square_cells((30, 30), {32767: (5, 10, 5, 10), 12: (15, 20, 15, 22)}, np.int16)
    pred = square_cells((30, 30), {65535: (5, 10, 5, 11), 3: (15, 20, 15, 20)}, np.uint16)
    r = match_instances(gt, pred)
    # 25/30 and 25/35 (0.714) -> both matched
    assert (r.n_true, r.n_pred, r.tp, r.fp, r.fn) == (2, 2, 2, 0, 0)
    assert r.tp == match_instances(gt.astype(np.int32), pred.astype(np.int64)).tp


def test_huge_sparse_ids_and_sparse_overlap_path():
    rng = np.random.default_rng(3)
    gt = random_labels(rng, (64, 80), 30, np.int64, max_id=2**40)
    pred = perturb(rng, gt)
    res = evaluate_pair(gt, pred, (0.3, 0.5, 0.8))
    for t, r in res.items():
        assert_matches_reference(r, reference_metric(gt, pred, t))
    # many cells in a small image force the sparse (scipy.sparse) overlap table
    g = np.arange(1, 151 * 151 + 1, dtype=np.int32).reshape(151, 151)
    r = match_instances(g, g.copy())
    assert r.tp == r.n_true == r.n_pred == 147 * 147
    grid = np.kron(np.arange(1, 26 * 26 + 1).reshape(26, 26), np.ones((4, 4), np.int64))
    gt = grid[:100, :100].astype(np.uint16)  # 625 cells of 4x4 px
    pred = perturb(rng, gt)
    for t, r in evaluate_pair(gt, pred, (0.2, 0.5)).items():
        assert_matches_reference(r, reference_metric(gt, pred, t))


def test_sparse_iou_matrix():
    gt = square_cells((20, 20), {1: (5, 7, 5, 10), 2: (7, 9, 5, 10)})
    pred = square_cells((20, 20), {5: (5, 9, 5, 10)})
    m = sparse_iou(gt, pred)
    assert m.shape == (2, 1)
    np.testing.assert_allclose(m.toarray(), [[0.5], [0.5]])


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        match_instances(np.zeros((5, 5), np.uint8), np.zeros((5, 6), np.uint8))
    with pytest.raises(ValueError):
        match_instances(np.zeros((5, 5, 2), np.uint8), np.zeros((5, 5, 2), np.uint8))


# ----------------------------------------------------------------------------------------------
# fast == reference on random label maps


@pytest.mark.parametrize("seed", range(12))
def test_random_against_reference(seed):
    rng = np.random.default_rng(seed)
    dtype = (np.uint16, np.int16, np.int32)[seed % 3]
    shape = ((64, 80), (33, 47), (96, 64), (4, 30))[seed % 4]  # (4, 30): no interior band
    gt = random_labels(rng, shape, int(rng.integers(5, 40)), dtype)
    pred = perturb(rng, gt)
    ths = (0.05, 0.1, 0.3, 0.5, 0.75, 0.9)
    for count_bd in (False, True):
        res = evaluate_pair(gt, pred, ths, count_bd_cells=count_bd)
        for t in ths:
            assert_matches_reference(res[t], reference_metric(gt, pred, t, count_bd))


def test_tiny_image_without_background_parity():
    # no interior band: the challenge drops only the smallest border value, so without any
    # background pixel the smallest id survives border removal
    lab = np.array([[3, 3, 4], [3, 5, 4], [5, 5, 4]], np.uint16)
    out = remove_boundary_cells(lab)
    np.testing.assert_array_equal(out, (lab == 3).astype(np.int32))
    lab0 = lab.copy()
    lab0[0, 0] = 0
    assert remove_boundary_cells(lab0).max() == 0


# ----------------------------------------------------------------------------------------------
# tiled path (>= 25,000,000 px)


def test_tiled_path_5000x5000():
    h = w = 5000  # exactly 25,000,000 px -> tiled (3 x 3 tiles of the 6000 x 6000 padded image)
    gt = np.zeros((h, w), np.uint16)
    pred = np.zeros((h, w), np.uint16)
    gt[100:120, 100:120] = 1  # tile (0, 0), matched
    pred[101:121, 100:120] = 7
    gt[500:520, 1990:2010] = 2  # cut by the x=2000 seam: removed from both tiles
    pred[500:520, 1990:2010] = 2
    gt[600:620, 1985:1999] = 3  # tile (0, 0), reaches col 1998 (its right band): removed
    pred[600:620, 1985:1999] = 3
    gt[2500:2520, 4985:5000] = 4  # touches the real right edge, but tile (1, 2) is padded: kept
    pred[2500:2520, 4986:5000] = 4
    gt[4990:5000, 3000:3010] = 5  # real bottom edge, padded tile (2, 1): kept, no prediction here
    gt[3000:3030, 3000:3030] = 6  # tile (1, 1): prediction too small
    pred[3000:3010, 3000:3010] = 9
    r = match_instances(gt, pred)
    # gt kept: 1, 4, 5, 6; pred kept: 7, 4, 9; matched: 1 and 4.
    # tile (2, 1) has no prediction: its gt cell counts in n_true but not in FN (parity)
    assert (r.n_true, r.n_pred, r.tp, r.fp, r.fn) == (4, 3, 2, 1, 1)
    assert r.precision == pytest.approx(2 / 3) and r.recall == pytest.approx(0.5)
    assert_matches_reference(r, reference_metric(gt, pred, 0.5))
    # same content just below the tiling size: whole-image path, the edge cells are removed
    small = match_instances(gt[:4999], pred[:4999])
    # seam cells 2 and 3 are now interior and matched; edge cells 4 and 5 are removed
    assert (small.n_true, small.n_pred, small.tp, small.fp, small.fn) == (4, 4, 3, 1, 1)


# ----------------------------------------------------------------------------------------------
# aggregation and table


def test_summarize_and_frame():
    a = MatchResult.from_counts(0.5, 3, 3, 2, 1, 1, 0.812345)
    b = MatchResult.from_counts(0.5, 3, 0, 0, 0, 0, 0.0)
    c = MatchResult.from_counts(0.5, 2, 2, 2, 0, 0, 1.0)
    s = summarize([a, b, c])
    assert s["n"] == 3 and s["median"] == pytest.approx(2 / 3)
    assert s["mean"] == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert summarize([a, b, c], decimals=4)["mean"] == pytest.approx((0.6667 + 1) / 3)
    assert np.isnan(summarize([])["mean"])
    df = results_to_frame(["x", "y", "z"], [a, b, c])
    assert tuple(df.columns) == RESULT_COLUMNS
    assert df.loc[0, "dice"] == 0.8123 and df.loc[0, "F1"] == 0.6667
    assert df.loc[1, "missed_num(FN)"] == 0 and df.loc[1, "true_num"] == 3
    df["seconds"] = [0.1, 0.2, 0.3]  # callers may add columns


# ----------------------------------------------------------------------------------------------
# CLI


def test_cli(tmp_path, capsys):
    gt_dir, seg_dir, out_dir = tmp_path / "gt", tmp_path / "seg", tmp_path / "out"
    gt_dir.mkdir()
    seg_dir.mkdir()
    gt1 = square_cells((30, 30), {1: (5, 9, 5, 10), 2: (15, 20, 15, 22)}, np.int16)
    seg1 = square_cells((30, 30), {3: (5, 9, 5, 10), 4: (15, 20, 15, 18)}, np.uint16)
    tifffile.imwrite(gt_dir / "cell_00001.tif", gt1)
    tifffile.imwrite(seg_dir / "cell_00001_label.tiff", seg1)
    tifffile.imwrite(gt_dir / "cell_00002.tif", gt1)
    tifffile.imwrite(seg_dir / "cell_00002_label.tiff", np.zeros_like(seg1))
    tifffile.imwrite(seg_dir / "cell_00003_label.tiff", seg1)  # no ground truth
    tifffile.imwrite(gt_dir / "cell_00004.tif", gt1[:20])
    tifffile.imwrite(seg_dir / "cell_00004_label.tiff", seg1)  # shape mismatch
    (seg_dir / "cell_00005_label.tiff").write_bytes(b"not a tiff")
    tifffile.imwrite(gt_dir / "cell_00005.tif", gt1)
    (seg_dir / "notes.txt").write_text("ignored")
    cmd = [sys.executable, str(REPO / "compute_metric.py"), "-g", str(gt_dir), "-s", str(seg_dir),
           "-thre", "0.5", "0.8", "-o", str(out_dir), "-n", "tuning.csv"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == ["tuning-0.5.csv", "tuning-0.8.csv"]
    lines = proc.stdout.splitlines()
    failed = [ln.strip().split(":")[0] for ln in lines[lines.index("failed cases: 3") + 1:]]
    assert failed == ["cell_00003_label.tiff", "cell_00004_label.tiff", "cell_00005_label.tiff"]
    df = pd.read_csv(out_dir / "tuning-0.5.csv")
    assert tuple(df.columns) == RESULT_COLUMNS
    assert list(df["names"]) == ["cell_00001_label.tiff", "cell_00002_label.tiff"]
    # image 1: IoU 1.0 and 15/35 -> TP 1 at 0.5; image 2: empty prediction (parity zeros)
    assert df.iloc[0, 1:].tolist() == [2, 2, 1, 1, 1, 0.5, 0.5, round(2 * 35 / (55 + 35), 4), 0.5]
    assert df.iloc[1, 1:].tolist() == [2, 0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0]
    assert "threshold: 0.5 mean F1 Score: 0.2500 median F1 Score: 0.2500" in proc.stdout
    df8 = pd.read_csv(out_dir / "tuning-0.8.csv")
    assert df8.loc[0, "correct_num(TP)"] == 1  # IoU 1.0 passes 0.8 too

    # all good -> exit 0, default output folder is the segmentation folder
    for name in ("cell_00003_label.tiff", "cell_00004_label.tiff", "cell_00005_label.tiff"):
        (seg_dir / name).unlink()
    import compute_metric  # in-process this time (imports are the slow part of a subprocess)

    assert compute_metric.main(cmd[2:-4] + ["--count_bd_cells"]) == 0
    assert "failed cases: none" in capsys.readouterr().out
    assert (seg_dir / "demo-0.8.csv").is_file()
    assert compute_metric.main(["-s", str(tmp_path / "missing")]) == 2


def test_perturb_makes_a_prediction_like_copy():
    from utils.perturb import perturb
    gt = np.zeros((80, 100), np.uint16)
    for i in range(20):  # 4 x 5 separate 10 x 12 cells
        y, x = divmod(i, 5)
        gt[5 + 20 * y:15 + 20 * y, 4 + 19 * x:16 + 19 * x] = i + 1
    out = perturb(gt, np.random.default_rng(0), drop=0.1, split=0.1)
    assert out.dtype == np.int32 and out.shape == gt.shape
    assert np.array_equal(out, perturb(gt, np.random.default_rng(0), drop=0.1, split=0.1))
    ids = np.unique(out)[1:]
    assert 18 <= len(ids) <= 20  # 2 cells dropped, 2 split in two (a dropped one stays dropped)
    assert (ids > 20).sum() >= 1 and (out > 0).sum() < 0.8 * (gt > 0).sum()  # split, eroded
