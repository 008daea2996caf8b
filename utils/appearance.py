"""Appearance augmentation: kinds of image the training data lacks, made from the ones it has.

Pixel-wise and local operations on a network image ``(H, W, 3) uint8`` RGB that never move a
pixel, so the label map (and the boxes computed from it) stay aligned by construction:

- ``invert``: dark cells on a bright background <-> bright cells on a dark one (grey images);
- ``colour_place``: a grey image moved to one random colour channel (a single-stain
  fluorescence image shown in red, green or blue), the other two left dark;
- ``channel_shuffle``: a random permutation of the colour channels (multi-stain fluorescence);
- ``stain``: H&E / HED stain jitter of brightfield images (colour deconvolution with
  scikit-image's Ruifrok-Johnston matrices, each stain's optical density scaled and shifted);
- ``gamma``: a gamma curve (a camera's or a display's response, over- or under-exposure);
- ``blur``: Gaussian blur (defocus, lower resolution optics);
- ``noise``: additive Gaussian noise (low light, short exposure).

Each is drawn with the probability of its hyp key (0 = off, the default: an older hyp file
trains exactly as before, and no random number is drawn for an operation that is off).
All randomness comes from the ``np.random.Generator`` passed in.
"""
from __future__ import annotations

import cv2
import numpy as np
from skimage.color import hed_from_rgb, rgb_from_hed

from utils.config import Hyp

# Stain jitter amplitudes: each stain's optical density is scaled by U(1 - a, 1 + a) and shifted by
# U(-b, b) (Tellez et al. 2018, "H&E stain augmentation", use a = 0.05..0.2, b = 0.05; the
# larger a here covers the spread of the TCGA scanners of MoNuSeg).
STAIN_SCALE = 0.2
STAIN_SHIFT = 0.05
# Gamma: the exponent is exp(U(-log G, log G)) with G = GAMMA_MAX, i.e. 0.5 to 2 (this project's
# choice, not tuned: within a factor of two of a linear response either way).
GAMMA_MAX = 2.0
# Blur: Gaussian sigma drawn from U(BLUR_SIGMA) pixels (1 px to 2 px of defocus at 256-px crops).
BLUR_SIGMA = (0.5, 2.0)
# Noise: standard deviation drawn from U(0, NOISE_MAX_STD) grey levels of 255.
NOISE_MAX_STD = 12.0
# An image whose channels differ by at most this many grey levels (mean) counts as grey.
GREY_TOL = 2.0
# Optical density floor: keeps -log(I / 255) finite for black pixels.
OD_EPS = 1.0


def is_grey(img: np.ndarray) -> bool:
    """True when the three channels of ``img (H, W, 3)`` are (nearly) equal."""
    sub = img[::4, ::4].astype(np.int16)
    return float(np.abs(sub - sub[..., :1]).mean()) <= GREY_TOL


def invert(img: np.ndarray) -> np.ndarray:
    """``255 - img``: bright objects on dark become dark objects on bright, and back."""
    return 255 - img


def place_in_channel(img: np.ndarray, channel: int) -> np.ndarray:
    """A grey ``img (H, W, 3)`` moved to one colour ``channel`` (0..2), the others set to 0."""
    out = np.zeros_like(img)
    out[..., channel] = img.mean(axis=2).astype(img.dtype) if img.ndim == 3 else img
    return out


def stain_jitter(img: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """H&E stain jitter: RGB -> HED optical densities, ``od * scale + shift`` per stain
    (``scale``, ``shift``: (3,)), back to RGB ``(H, W, 3) uint8``."""
    od = -np.log((img.astype(np.float32) + OD_EPS) / (255.0 + OD_EPS))      # (H, W, 3) RGB OD
    hed = od @ hed_from_rgb.astype(np.float32)                                # stain densities
    hed = hed * scale.astype(np.float32) + shift.astype(np.float32)
    rgb = np.exp(-(hed @ rgb_from_hed.astype(np.float32))) * (255.0 + OD_EPS) - OD_EPS
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def apply_gamma(img: np.ndarray, gamma: float) -> np.ndarray:
    """``255 * (img / 255) ** gamma`` through a 256-entry table (uint8 in, uint8 out)."""
    table = np.rint(255.0 * (np.arange(256) / 255.0) ** gamma).astype(np.uint8)
    return table[img]


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of ``img`` with ``sigma`` pixels (kernel from sigma, borders reflected)."""
    return cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma)


def add_noise(img: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise of ``std`` grey levels; a grey image stays grey."""
    shape = img.shape[:2] + (1,) if is_grey(img) else img.shape
    noise = rng.normal(0.0, std, size=shape).astype(np.float32)
    return np.clip(np.rint(img.astype(np.float32) + noise), 0, 255).astype(np.uint8)


def _draw(p: float, rng: np.random.Generator) -> bool:
    """A Bernoulli(p) draw that consumes no random number when ``p`` is 0."""
    return p > 0 and rng.random() < p


def jitter_appearance(img: np.ndarray, modality: str, hyp: Hyp,
                      rng: np.random.Generator) -> np.ndarray:
    """The appearance augmentation of a training tile ``(H, W, 3) uint8`` of ``modality``.

    Stain jitter applies to brightfield ("bf") tiles, inversion and colour placement to grey ones
    (fl and gs; a grey bf tile too), channel shuffles to colour fluorescence; blur and noise to
    all. Order: colour changes, gamma, then blur, then noise (noise is added after the optics).
    """
    grey = is_grey(img)
    if modality == "bf" and not grey and _draw(hyp.stain, rng):
        img = stain_jitter(img, 1.0 + rng.uniform(-STAIN_SCALE, STAIN_SCALE, 3),
                           rng.uniform(-STAIN_SHIFT, STAIN_SHIFT, 3))
    if grey and _draw(hyp.invert, rng):
        img = invert(img)
    if grey and _draw(hyp.colour_place, rng):
        img = place_in_channel(img, int(rng.integers(0, 3)))
    elif modality == "fl" and not grey and _draw(hyp.channel_shuffle, rng):
        img = np.ascontiguousarray(img[..., rng.permutation(3)])
    if _draw(hyp.gamma, rng):
        img = apply_gamma(img, float(np.exp(rng.uniform(-np.log(GAMMA_MAX), np.log(GAMMA_MAX)))))
    if _draw(hyp.blur, rng):
        img = gaussian_blur(img, float(rng.uniform(*BLUR_SIGMA)))
    if _draw(hyp.noise, rng):
        img = add_noise(img, float(rng.uniform(0.0, NOISE_MAX_STD)), rng)
    return img
