"""Cell-size rescaling at prediction time: the ``size_rule`` block of data/routing.yaml.

Cellpose rescales every image to one training diameter with a size estimate. The AWF needs less:
it segments cells of about 14-75 px across as they are (anchors of 11-55 px at stride 8, trained
on native-scale crops), and fails outside that range (CTC DIC-HeLa cells of ~118 px come out as
clumps; PhC-PSC cells of ~12 px and the smallest DSB2018 nuclei are missed or merged). So an image
is segmented once at its own scale; when the median diameter of what that pass found
(:func:`utils.inference.median_diameter`) falls outside ``[min_diameter, max_diameter]``, the image
is resized so that the cells measure ``small_target`` or ``large_target`` px and segmented again.
Images inside the range cost one pass, unless that pass was unsure of small cells (the probe:
:meth:`SizeRule.wants_probe`, a second pass enlarged, kept when it finds more cells more surely).
An enlargement stops where the image would exceed ``max_full_size`` a side (utils/inference.py:
2048 px), so a whole slide is never enlarged.

Measured with ckpts/general.pt on the data/cells.yaml validation split (evaluate.py, fixed
``--scale`` per source; the values below were chosen on those images): DIC-HeLa 0.724 at scale 1,
0.865 at 0.6, 0.872 at 0.5, 0.786 at 0.42; PhC-PSC 0.851 at 1, 0.867 at 1.5, 0.828 at 2; Usiigaci
(~58 px found) 0.709 at 1, 0.670 at 0.7; DSB2018 nuclei found under 12 px 0.652 at 1, 0.911 at 2.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# The factor is kept in this range whatever the first pass measured (a pass that found a few specks
# or one merged blob must not blow an image up or shrink it to nothing; this project's choice).
MIN_FACTOR = 0.25
MAX_FACTOR = 3.0
# Factors are rounded to a geometric grid of this many steps per doubling (12: +-3% in diameter),
# so that a first pass that measures a hair differently (bf16 against fp32, another CPU) gives the
# same second pass. Unrounded, examples/fl_cells.png measured 1.934x in fp32 and 1.922x in bf16
# with ckpts/general.pt, and the two resampled passes agreed at F1 0.916 only (0.994 at scale 1);
# both round to 2^(11/12) = 1.888x.
FACTOR_STEPS_PER_OCTAVE = 12
# predict.py --diameter D (Cellpose's flag: the cells' typical diameter in the image, pixels): the
# image is resized once by DIAMETER_TARGET / D, and the size rule is off. 50 px: of the common
# diameters measured for every image (Cellpose's approach; data/routing.yaml's size_rule comment:
# ckpts/general.pt, evaluate.py on the 136 data/cells.yaml validation images), 50 px scored 0.806
# and 30 px 0.791. It lies inside the rule's working range (min_diameter 14 .. max_diameter 75).
DIAMETER_TARGET = 50.0
# An Omnipose trained at one cell diameter D (models.omnipose.OmniposeConfig.diameter) segments an
# image once as it is, then again resized so that the cells measure D, unless the first pass found
# them within this factor of D already (+-15%: the zoom range of its training augmentation,
# data/hyps/hyp.omnipose_sized.yaml scale 0.25 = U(0.75, 1.25), Cellpose's training default).
TRAINED_DIAMETER_TOLERANCE = 1.15


def round_factor(factor: float) -> float:
    """``factor`` to the nearest point of the FACTOR_STEPS_PER_OCTAVE grid (1.0 is a grid point)."""
    return 2.0 ** (round(math.log2(factor) * FACTOR_STEPS_PER_OCTAVE) / FACTOR_STEPS_PER_OCTAVE)


def to_diameter(diameter: float, target: float) -> float:
    """The resize factor that brings cells of ``diameter`` px to ``target`` px, on the grid and
    within [MIN_FACTOR, MAX_FACTOR] (1.0 when nothing was measured: ``diameter`` 0)."""
    if diameter <= 0:
        return 1.0
    return min(max(round_factor(target / diameter), MIN_FACTOR), MAX_FACTOR)


def trained_size_rule(diameter: float) -> "SizeRule | None":
    """The size rule of a model trained at one cell ``diameter`` (px; 0 = trained at native
    scale: None, one pass as the image is): a second pass at ``diameter`` when the first found
    cells more than TRAINED_DIAMETER_TOLERANCE off it."""
    if diameter <= 0:
        return None
    return SizeRule(enabled=True, min_diameter=diameter / TRAINED_DIAMETER_TOLERANCE,
                    small_target=diameter, max_diameter=diameter * TRAINED_DIAMETER_TOLERANCE,
                    large_target=diameter)


def diameter_scale(diameter: float) -> float:
    """The resize factor of ``--diameter``: the cells' typical diameter in the image (pixels,
    > 0) -> DIAMETER_TARGET / diameter (not rounded: the value is the user's, not a measurement)."""
    if not diameter > 0:
        raise ValueError(f"--diameter {diameter}: must be > 0 (0 = automatic: the size rule)")
    return DIAMETER_TARGET / diameter


@dataclass
class SizeRule:
    """When and how far an image is resized before its second pass (diameters in pixels of the
    image as given)."""

    enabled: bool
    min_diameter: float   # cells found smaller than this are enlarged ...
    small_target: float   # ... to this diameter
    max_diameter: float   # cells found larger than this are shrunk ...
    large_target: float   # ... to this diameter
    # The probe: an AWF first pass inside the range, unsure of itself (cells under
    # probe_below_diameter px, mean detection score under probe_below_conf), is segmented again
    # enlarged by probe_factor, and that pass is kept when it finds more cells more surely
    # (cells x mean score over probe_gain times the first's) of the range's size (min_diameter
    # or more in its own pixels: not specks). Whole cells shown smaller than the
    # model learnt them (phase contrast at a lower magnification) come out as a few merged,
    # doubtful objects at a diameter the range accepts. Off by default (probe_factor 1);
    # data/routing.yaml sets it; an Omnipose rule never probes (it has no detection score).
    probe_below_diameter: float = 0.0
    probe_below_conf: float = 0.0
    probe_factor: float = 1.0
    probe_gain: float = 1.0

    def __post_init__(self):
        if not 0 < self.min_diameter <= self.max_diameter:
            raise ValueError(f"size_rule: needs 0 < min_diameter <= max_diameter, got "
                             f"{self.min_diameter} and {self.max_diameter}")
        if not (self.small_target >= self.min_diameter and 0 < self.large_target <= self.max_diameter):
            raise ValueError("size_rule: small_target must be >= min_diameter and large_target "
                             "<= max_diameter (else a second pass would land outside the range)")
        if self.probe_factor < 1.0 or self.probe_gain < 1.0:
            raise ValueError(f"size_rule: probe_factor and probe_gain must be >= 1 (1: no probe; "
                             f"got {self.probe_factor} and {self.probe_gain})")

    def factor(self, diameter: float) -> float:
        """Median cell diameter of the first pass (px; 0 = nothing found) -> the resize factor of
        the second pass (1.0 = no second pass), on the FACTOR_STEPS_PER_OCTAVE grid."""
        if not self.enabled or diameter <= 0:
            return 1.0
        if diameter < self.min_diameter:
            return to_diameter(diameter, self.small_target)
        if diameter > self.max_diameter:
            return to_diameter(diameter, self.large_target)
        return 1.0

    def wants_probe(self, diameter: float, det_conf: float) -> bool:
        """Whether a first pass that the rule leaves alone (``factor`` 1.0) is probed: its cells'
        median diameter (px, > 0) and mean detection score (0-1) are both under the bounds."""
        return (self.enabled and self.probe_factor > 1.0 and 0 < diameter < self.probe_below_diameter
                and det_conf < self.probe_below_conf)

    def prefers_probe(self, first: tuple[int, float], probe: tuple[int, float],
                      probe_diameter: float) -> bool:
        """``(cells, mean detection score)`` of the first pass and of the probe, and the median
        diameter of the probe's cells in its own (enlarged) pixels -> whether the probe is kept:
        its cells x score (the expected true detections) over ``probe_gain`` times the first's,
        and its cells no smaller than ``min_diameter`` there (else it found specks: texture or
        noise that enlarging turned into many small detections)."""
        return (probe[0] * probe[1] > self.probe_gain * first[0] * first[1]
                and probe_diameter >= self.min_diameter)
