"""Image modality from the raw pixels: "bf" (stained / colour brightfield), "fl" (fluorescence,
dark background) or "gs" (grayscale with a light or mid-grey background: phase contrast, DIC,
grayscale brightfield).

The rule (all thresholds are the module constants below; tuned on dsb2018 and usiigaci, see
tests/test_modality.py's ``modality_agreement``):

1. Three colour channels whose red carries under RED_EMPTY_FRACTION of the channel sum -> "fl"
   (fluorescence stains shown in green/blue, the original framework's rule; 2-channel images are
   treated the same way, as ``utils.io`` shows them: green/blue over an empty red).
2. Dark background -> "fl", whatever the channels: the median intensity (the background in a
   slide where cells cover under half of the field) lies in the lowest FL_MAX_MEDIAN_POSITION of
   the image's robust intensity range [P_LOW, P_HIGH] percentiles. Fluorescence sits at ~0-0.2,
   phase contrast / DIC at ~0.35-0.8 (mid-grey background, darker and brighter objects), light
   backgrounds (brightfield) at ~0.5-0.95. Scale-free, so 8-bit, 16-bit and float all work.
3. Near-equal channels (single channel, or RGB grey) -> "gs".
4. Otherwise (colour, light background) -> "bf".

Pixels are subsampled on a regular grid of at most SAMPLE_PIXELS points, so a 1024x1024 image
takes about a millisecond and the answer is deterministic.
"""
from __future__ import annotations

import numpy as np


# The modality tags, the keys of data/routing.yaml's per-modality sections and meta.csv's values.
MODALITIES = ("bf", "fl", "gs")

# Grid subsample size: percentiles of 65,536 grid points match the full image's to a fraction of
# a grey level on dsb2018/usiigaci, and keep classify_modality around a millisecond at 1024x1024.
SAMPLE_PIXELS = 65_536
# Red channel mean under this fraction of the sum of the channel means = "red is empty": the
# original framework's rule (5%). dsb2018 stained brightfield: red is 0.32-0.45 of the sum;
# synthetic 3-channel fluorescence (utils.synthetic): 0.01-0.02.
RED_EMPTY_FRACTION = 0.05
# Robust intensity range of the grey image: its 0.1 / 99.9 percentiles. On dsb2018 two
# fluorescence images have under 1% bright pixels (so their P99 is still background, e.g.
# dsb_93c5638e7e64: P99 = 4, max = 96): with P99 as the top, their median position is 0.5-0.67
# and they read as "gs"; P99.9 sees their nuclei. P0.1 rather than the minimum ignores dead pixels.
P_LOW = 0.1
P_HIGH = 99.9
# Median position in [P_LOW, P_HIGH] below which the background is "dark" = fluorescence.
# Measured on the SAMPLE_PIXELS grid: dsb2018 fl 0.00-0.19 (370 images), usiigaci phase contrast
# 0.36-0.45 (30), dsb2018 grey brightfield 0.90-0.95 (9), dsb2018 stained bf 0.50-0.95 (81).
# 0.27 is the middle of the gap between fluorescence (0.19) and phase contrast (0.36).
FL_MAX_MEDIAN_POSITION = 0.27
# Channels are "near-equal" (a grey image stored as RGB) when the mean per-pixel channel spread
# (max - min over the channels) is under this fraction of the robust intensity range. dsb2018
# stained brightfield: 0.12-0.91; grey stored as RGB: 0 (also after a JPEG round trip of the
# dsb2018 grey images). 0.05 leaves room for a few grey levels of colour noise.
GRAY_MAX_CHANNEL_SPREAD = 0.05


def _sample(img: np.ndarray) -> np.ndarray:
    """Strided grid subsample as float32 ``(C, N)`` (channel-major: fast reductions over C);
    pixels with a non-finite channel are dropped."""
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or not 1 <= arr.shape[2] <= 4:
        raise ValueError(f"expected an (H, W) or (H, W, C) image with C in 1..4, got {arr.shape}")
    if arr.shape[2] == 4:  # RGBA: drop alpha
        arr = arr[..., :3]
    h, w = arr.shape[:2]
    step = max(1, int(np.ceil(np.sqrt(h * w / SAMPLE_PIXELS))))
    grid = arr[::step, ::step]
    sample = np.stack([grid[..., c].astype(np.float32).ravel() for c in range(arr.shape[2])])
    if arr.dtype.kind == "f":
        finite = np.isfinite(sample).all(axis=0)
        if not finite.all():
            sample = np.ascontiguousarray(sample[:, finite])  # keep reductions over C fast
    return sample


def modality_features(img: np.ndarray) -> dict:
    """The numbers the rule uses (for tuning and debugging): ``red_fraction`` (None for a single
    channel), ``median_position`` (None for a constant image), ``channel_spread``."""
    s = _sample(img)
    feats = {"red_fraction": None, "median_position": None, "channel_spread": 0.0}
    if s.shape[1] == 0:
        return feats
    if s.shape[0] == 2:  # green/blue over an empty red, as utils.io shows it
        s = np.concatenate([np.zeros_like(s[:1]), s], axis=0)
    grey = s.mean(axis=0) if s.shape[0] > 1 else s[0]
    lo, med, hi = np.percentile(grey, [P_LOW, 50.0, P_HIGH])
    span = float(hi - lo)
    if span > 0:
        feats["median_position"] = float(med - lo) / span
    if s.shape[0] == 3:
        means = np.clip(s.mean(axis=1), 0, None)
        total = float(means.sum())
        feats["red_fraction"] = float(means[0]) / total if total > 0 else None
        spread = float((s.max(axis=0) - s.min(axis=0)).mean())
        feats["channel_spread"] = spread / span if span > 0 else (0.0 if spread == 0 else np.inf)
    return feats


def classify_modality(img: np.ndarray) -> str:
    """Raw image ``(H, W)`` or ``(H, W, C)`` (any dtype, as ``utils.io.read_image`` gives it) ->
    "bf", "fl" or "gs" by the rule in the module docstring. A constant image has no background to
    judge: "gs" if grey (all-zero included), "bf" if coloured."""
    f = modality_features(img)
    if f["red_fraction"] is not None and f["red_fraction"] < RED_EMPTY_FRACTION:
        return "fl"
    if f["median_position"] is not None and f["median_position"] < FL_MAX_MEDIAN_POSITION:
        return "fl"
    if f["channel_spread"] < GRAY_MAX_CHANNEL_SPREAD:
        return "gs"
    return "bf"
