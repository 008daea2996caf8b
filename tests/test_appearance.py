"""Appearance augmentation (utils.appearance): each operation keeps the label map aligned with
the image, through the whole training transform, and does what it says."""
from __future__ import annotations

import numpy as np
import pytest

from tests.test_augment import make_label
from utils.appearance import (add_noise, apply_gamma, invert, is_grey, jitter_appearance, place_in_channel,
                              stain_jitter)
from utils.augment import Tile, augment_tiles
from utils.config import Hyp

S = 96
OPS = ("invert", "colour_place", "channel_shuffle", "stain", "gamma", "blur", "noise")
OFF = {k: 0.0 for k in OPS}
FG_GREY, BG_GREY = 200, 30
HE_NUCLEUS, HE_BACKGROUND = (90, 50, 140), (235, 190, 215)   # haematoxylin purple on eosin pink


def scene(modality: str, seed: int = 0) -> Tile:
    """Discs on a background: grey (fl/gs), H&E colours (bf) or two-colour fluorescence."""
    label = make_label((S, S), 14, seed, radius=(4, 9))
    fg = label > 0
    if modality == "bf":
        img = np.where(fg[..., None], HE_NUCLEUS, HE_BACKGROUND).astype(np.uint8)
    elif modality == "fl-colour":
        img = np.zeros((S, S, 3), np.uint8)
        img[..., 1] = np.where(fg, FG_GREY, BG_GREY)
        img[..., 2] = np.where(fg, 90, 10)
        modality = "fl"
    else:
        img = np.repeat(np.where(fg, FG_GREY, BG_GREY).astype(np.uint8)[..., None], 3, axis=2)
    return Tile(img, label, None, modality)


def alignment(img: np.ndarray, label: np.ndarray) -> float:
    """|correlation| between the image's channel sum and the foreground mask (1 = aligned)."""
    x = img.astype(np.float64).sum(axis=2).ravel()
    y = (label > 0).ravel().astype(np.float64)
    if x.std() == 0 or y.std() == 0:
        return 0.0
    return abs(float(np.corrcoef(x, y)[0, 1]))


@pytest.mark.parametrize("op,modality", [("invert", "fl"), ("invert", "gs"),
                                         ("colour_place", "fl"), ("channel_shuffle", "fl-colour"),
                                         ("stain", "bf"), ("gamma", "fl"), ("gamma", "bf"),
                                         ("blur", "gs"), ("noise", "bf")])
def test_each_operation_keeps_labels_aligned_through_the_training_transform(op, modality):
    hyp = Hyp(degrees=20.0, scale=0.3, mosaic=0.0, **{**OFF, op: 1.0})
    base = scene(modality)
    changed = 0
    for seed in range(6):
        out = augment_tiles([scene(modality)], S, hyp, np.random.default_rng(seed))
        assert out.img.shape == (S, S, 3) and out.img.dtype == np.uint8
        assert alignment(out.img, out.label) > 0.8, (op, seed)
        # the same geometry without the operation: only the pixel values differ
        ref = augment_tiles([scene(modality)], S, Hyp(degrees=20.0, scale=0.3, mosaic=0.0, **OFF),
                            np.random.default_rng(seed))
        changed += int(not np.array_equal(ref.img, out.img))
    assert changed >= 4, f"{op} rarely changed the image"
    assert base.img.shape == (S, S, 3)


def test_the_alignment_measure_catches_a_misaligned_label():
    """The measure of the test above fails for a label flipped against its image."""
    t = scene("gs")
    assert alignment(t.img, t.label) > 0.95
    assert alignment(t.img, t.label[::-1, ::-1]) < 0.5


def test_operations_off_draw_no_random_numbers():
    """A hyp without the new keys trains exactly as before (same random stream)."""
    rng = np.random.default_rng(3)
    img = scene("fl").img
    out = jitter_appearance(img.copy(), "fl", Hyp(), rng)
    assert np.array_equal(out, img)
    assert rng.random() == np.random.default_rng(3).random()


def test_invert_and_colour_place():
    img = scene("gs").img
    assert np.array_equal(invert(invert(img)), img)
    assert invert(img)[0, 0, 0] == 255 - img[0, 0, 0]
    red = place_in_channel(img, 0)
    assert np.array_equal(red[..., 0], img[..., 0]) and not red[..., 1:].any()
    assert is_grey(img) and not is_grey(red)


def test_stain_jitter_identity_and_direction():
    img = scene("bf").img
    same = stain_jitter(img, np.ones(3), np.zeros(3))
    assert np.abs(same.astype(int) - img).max() <= 2
    darker = stain_jitter(img, np.array([1.5, 1.0, 1.0]), np.zeros(3))   # more haematoxylin
    fg = scene("bf").label > 0
    assert darker[fg].astype(int).sum() < img[fg].astype(int).sum()


def test_gamma_keeps_the_ends_and_the_order_of_grey_levels():
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(apply_gamma(ramp, 1.0), ramp)
    for gamma in (0.5, 2.0):
        out = apply_gamma(ramp, gamma).ravel().astype(int)
        assert out[0] == 0 and out[-1] == 255 and np.all(np.diff(out) >= 0)
    assert apply_gamma(ramp, 2.0)[8, 0] < 128 < apply_gamma(ramp, 0.5)[8, 0]   # darker / brighter


def test_noise_keeps_grey_images_grey():
    img = scene("gs").img
    out = add_noise(img, 10.0, np.random.default_rng(0))
    assert is_grey(out) and not np.array_equal(out, img)
    assert abs(float(out.astype(int).mean() - img.astype(int).mean())) < 2.0


def test_probabilities_are_validated():
    with pytest.raises(ValueError, match="invert"):
        Hyp(invert=1.5)
