"""The cell-size rule (utils/sizing.py) and the second pass of Segmenter.segment."""
import numpy as np
import pytest
from skimage.draw import disk
from skimage.measure import label as connected

from utils.config import ConfigError
from utils.inference import RegionStats, RunParams, Segmenter, median_diameter
from utils.routing import DEFAULT_ROUTING, Overrides, load_routing
from utils.sizing import FACTOR_STEPS_PER_OCTAVE, MAX_FACTOR, MIN_FACTOR, SizeRule, round_factor

RULE = SizeRule(enabled=True, min_diameter=14, small_target=20, max_diameter=75, large_target=60,
                probe_below_diameter=40, probe_below_conf=0.5, probe_factor=2.0, probe_gain=1.2)


def test_factor_leaves_the_working_range_alone_and_rescales_outside_it():
    assert RULE.factor(14) == RULE.factor(40) == RULE.factor(75) == 1.0
    assert RULE.factor(10) == pytest.approx(2.0)          # 10 px cells -> 20 px
    assert RULE.factor(120) == pytest.approx(0.5)         # 120 px cells -> 60 px
    assert RULE.factor(0.0) == 1.0                        # nothing found: no second pass
    assert RULE.factor(1.0) == MAX_FACTOR and RULE.factor(5000) == MIN_FACTOR
    off = SizeRule(enabled=False, min_diameter=14, small_target=20, max_diameter=75,
                   large_target=60)
    assert off.factor(5) == off.factor(500) == 1.0


def test_factors_lie_on_a_grid_so_that_a_hair_of_difference_gives_the_same_second_pass():
    # examples/fl_cells.png's first pass: 10.34 px in fp32, 10.41 px in bf16 (general.pt)
    assert RULE.factor(20 / 1.934) == RULE.factor(20 / 1.922) == pytest.approx(2 ** (11 / 12))
    for d in np.r_[np.linspace(4, 13.9, 37), np.linspace(75.1, 400, 41)]:
        f = RULE.factor(float(d))
        steps = np.log2(f) * FACTOR_STEPS_PER_OCTAVE
        assert steps == pytest.approx(round(steps), abs=1e-9) or f in (MAX_FACTOR, MIN_FACTOR)
        target = RULE.small_target if d < RULE.min_diameter else RULE.large_target
        half_step = 2 ** (0.5 / FACTOR_STEPS_PER_OCTAVE)
        assert target / half_step - 1e-9 <= d * f <= target * half_step + 1e-9 or f in (MAX_FACTOR, MIN_FACTOR)
    assert round_factor(1.0) == 1.0 and round_factor(0.25) == 0.25


@pytest.mark.parametrize("bad", [dict(min_diameter=80), dict(small_target=10),
                                 dict(large_target=90), dict(min_diameter=0)])
def test_a_rule_whose_second_pass_would_leave_the_range_is_refused(bad):
    values = dict(enabled=True, min_diameter=14, small_target=20, max_diameter=75, large_target=60)
    with pytest.raises(ValueError, match="size_rule"):
        SizeRule(**{**values, **bad})


class ThresholdSegmenter(Segmenter):
    """Bright blobs -> instances, each detected with a score of 0.9 (a sure pass); records the
    shape of every region it was given."""

    def __init__(self, params):
        import torch
        super().__init__(torch.nn.Identity(), params=params)
        self.regions = []

    def _segment_region(self, image):
        self.regions.append(image.shape[:2])
        label = connected(image[..., 0] > 127).astype(np.int32)
        n = int(label.max())
        return label, RegionStats(det_score_sum=n * 0.9, n_det=n)


def blobs(shape, radius, centres):
    image = np.zeros((*shape, 3), np.uint8)
    for c in centres:
        image[disk(c, radius, shape=shape)] = 255
    return image


@pytest.mark.parametrize("radius, factor", [(60, 0.5), (4, 2.6)])
def test_cells_outside_the_range_are_segmented_again_at_the_rule_s_scale(radius, factor):
    image = blobs((400, 480), radius, [(100, 100), (100, 300), (300, 200)])
    seg = ThresholdSegmenter(RunParams())
    seg.params.size_rule = RULE
    out = seg.segment(image)
    first_d = median_diameter(connected(image[..., 0] > 127))  # what the first pass found
    assert seg.regions[0] == (400, 480)
    assert len(seg.regions) == 2 and seg.regions[1] == (round(400 * out.scale), round(480 * out.scale))
    assert out.scale == pytest.approx(RULE.factor(first_d)) == pytest.approx(factor, rel=0.1)
    assert out.label.shape == (400, 480) and out.n_cells == 3     # mapped back, ids kept
    assert abs(out.diameter - first_d) < 0.1 * first_d


def test_cells_inside_the_range_cost_one_pass_and_a_fixed_scale_skips_the_rule():
    image = blobs((300, 300), 15, [(80, 80), (200, 200)])
    seg = ThresholdSegmenter(RunParams())
    seg.params.size_rule = RULE
    assert seg.segment(image).scale == 1.0 and len(seg.regions) == 1
    big = blobs((300, 300), 60, [(150, 150)])
    fixed = ThresholdSegmenter(RunParams(scale=0.8))  # no size_rule: what --scale 0.8 builds
    assert fixed.segment(big).scale == 0.8 and fixed.regions == [(240, 240)]


def test_a_second_pass_that_finds_nothing_keeps_the_first():
    class Vanishing(ThresholdSegmenter):
        def _segment_region(self, image):
            label, stats = super()._segment_region(image)
            return (label if len(self.regions) == 1 else np.zeros_like(label)), stats
    seg = Vanishing(RunParams())
    seg.params.size_rule = RULE
    out = seg.segment(blobs((400, 400), 60, [(200, 200)]))
    assert len(seg.regions) == 2 and out.scale == 1.0 and out.n_cells == 1


def test_the_routing_yaml_rule_applies_unless_the_run_fixes_the_scale(tmp_path):
    cfg = load_routing()
    assert cfg.size_rule == RULE   # data/routing.yaml's values
    assert cfg.inference_params("gs").size_rule == RULE
    assert cfg.inference_params("gs").scale == 1.0
    fixed = cfg.inference_params("gs", Overrides(scale=0.5))
    assert fixed.size_rule is None and fixed.scale == 0.5
    assert Overrides(scale=0.5).omnipose_params().scale == 0.5
    assert Overrides().omnipose_params().scale == 1.0
    path = tmp_path / "routing.yaml"
    path.write_text(DEFAULT_ROUTING.read_text().replace("large_target: 60",
                                                        "large_target: 60\n  target: 3"))
    with pytest.raises(ConfigError, match="target"):   # an unknown key is an error
        load_routing(path)


def test_scale_flag_takes_a_positive_number():
    import argparse

    from utils.cli import scale_arg
    assert scale_arg("0.5") == 0.5
    for bad in ("0", "-1", "half"):
        with pytest.raises(argparse.ArgumentTypeError):
            scale_arg(bad)


def test_an_enlargement_stops_where_the_image_would_be_cut_into_chunks():
    image = blobs((300, 240), 4, [(60, 60), (150, 120), (240, 180)])  # ~8 px: asks for ~2.6x
    seg = ThresholdSegmenter(RunParams(max_full_size=400))
    seg.params.size_rule = RULE
    out = seg.segment(image)
    assert out.scale == pytest.approx(400 / 300) and seg.regions[1] == (400, 320)
    assert out.label.shape == (300, 240) and out.n_cells == 3
    at_limit = ThresholdSegmenter(RunParams(max_full_size=300))
    at_limit.params.size_rule = RULE
    assert at_limit.segment(image).scale == 1.0 and len(at_limit.regions) == 1


def merged_at_native_scale(image):
    """A stand-in for whole cells shown smaller than trained on: the pass at the image's own
    size merges touching pairs (one doubtful object each), the enlarged pass separates them."""
    from scipy.ndimage import binary_dilation
    mask = image[..., 0] > 127
    if image.shape[0] > 300:
        return connected(mask).astype(np.int32)
    return (connected(binary_dilation(mask, iterations=2)) * mask).astype(np.int32)


class MergingSegmenter(ThresholdSegmenter):
    """:func:`merged_at_native_scale`, its objects scored ``native`` at the image's own size
    and ``enlarged`` on a larger one."""

    def __init__(self, params, native=0.3, enlarged=0.8):
        super().__init__(params)
        self.native, self.enlarged = native, enlarged

    def _segment_region(self, image):
        self.regions.append(image.shape[:2])
        label = merged_at_native_scale(image)
        n = int(label.max())
        score = self.native if image.shape[0] <= 300 else self.enlarged
        return label, RegionStats(det_score_sum=n * score, n_det=n)


def pairs_image():
    """Four pairs of 13-px discs 1 px apart in 300 x 300 (a merged pair measures ~17 px, a disc
    ~12 px: the pairs lie in the size rule's range, the discs under it)."""
    centres = [(y, x + dx) for y in (75, 225) for x in (75, 225) for dx in (-7, 7)]
    return blobs((300, 300), 6, centres)


def test_an_unsure_first_pass_inside_the_range_is_probed_enlarged_and_the_probe_kept():
    seg = MergingSegmenter(RunParams())
    seg.params.size_rule = RULE
    out = seg.segment(pairs_image())
    assert seg.regions == [(300, 300), (600, 600)]
    assert out.scale == 2.0 and out.n_cells == 8 and out.label.shape == (300, 300)
    off = MergingSegmenter(RunParams())   # the same rule without the probe: one pass, 4 objects
    off.params.size_rule = SizeRule(enabled=True, min_diameter=14, small_target=20,
                                    max_diameter=75, large_target=60)
    assert off.segment(pairs_image()).n_cells == 4 and off.regions == [(300, 300)]


@pytest.mark.parametrize("why", ["sure", "large", "no gain", "at the size limit"])
def test_the_probe_is_skipped_or_dropped_unless_the_first_pass_was_unsure_and_it_gains(why):
    image, params = pairs_image(), RunParams()
    if why == "sure":       # a confident first pass is not probed
        seg = MergingSegmenter(params, native=0.9)
    elif why == "large":    # cells over probe_below_diameter (merged pairs of 50-px discs)
        image = blobs((300, 300), 25, [(80, 70), (80, 122), (220, 150)])
        seg = MergingSegmenter(params)
    elif why == "no gain":  # probed: the same 4 cells (18 px, apart), no surer: first kept
        image = blobs((300, 300), 9, [(60, 60), (60, 240), (240, 60), (240, 240)])
        seg = MergingSegmenter(params, enlarged=0.33)
    else:                   # enlarging would cut the image into chunks: no probe
        seg = MergingSegmenter(RunParams(max_full_size=300))
    seg.params.size_rule = RULE
    out = seg.segment(image)
    assert out.scale == 1.0
    assert len(seg.regions) == (2 if why == "no gain" else 1)
    assert out.n_cells == {"sure": 4, "large": 2, "no gain": 4, "at the size limit": 4}[why]


class SpeckSegmenter(ThresholdSegmenter):
    """The first pass finds 4 doubtful blobs; enlarged, it finds 200 sure 6-px specks (texture
    or noise turned into detections): more cells x score, but smaller than the working range."""

    def _segment_region(self, image):
        self.regions.append(image.shape[:2])
        if image.shape[0] <= 300:
            label = connected(image[..., 0] > 127).astype(np.int32)
        else:
            label = np.zeros(image.shape[:2], np.int32)
            for i in range(200):
                y, x = 20 + (i // 20) * 28, 20 + (i % 20) * 28
                label[disk((y, x), 3, shape=label.shape)] = i + 1
        n = int(label.max())
        return label, RegionStats(det_score_sum=n * (0.3 if image.shape[0] <= 300 else 0.9), n_det=n)


def test_a_probe_that_finds_specks_smaller_than_the_working_range_is_dropped():
    seg = SpeckSegmenter(RunParams())
    seg.params.size_rule = RULE
    out = seg.segment(blobs((300, 300), 9, [(60, 60), (60, 240), (240, 60), (240, 240)]))
    assert seg.regions == [(300, 300), (600, 600)]     # probed ...
    assert out.scale == 1.0 and out.n_cells == 4       # ... and dropped


def test_a_rule_with_a_probe_factor_under_one_is_refused():
    with pytest.raises(ValueError, match="probe_factor"):
        SizeRule(enabled=True, min_diameter=14, small_target=20, max_diameter=75,
                 large_target=60, probe_factor=0.5)
