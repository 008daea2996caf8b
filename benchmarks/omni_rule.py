"""Measure the Omnipose routing rule (data/routing.yaml omni_rule) from two evaluate.py runs.

Run evaluate.py twice on the same labelled images, once with the AWF checkpoint and once with the
Omnipose checkpoint (``--ckpt``), then:

    python -m benchmarks.omni_rule AWF.csv OMNI.csv [--modalities gs]

The rule (utils.routing.OmniRule) takes Omnipose's mask when ``awf_conf < below``, or
``omni_conf > awf_conf + margin``, or ``omni_diameter > awf_diameter * ratio`` (confidence and
diameter are the CSV columns of the same names). For each modality and overall it prints the
mean F1 of AWF alone, Omnipose alone, the per-image oracle (the better of the two), the rule
with the routing YAML's values, the best rule of a grid (in-sample: tuned on the images it is
scored on, so optimistic), and the leave-one-out F1: each image routed by the grid rule tuned
on all the other images, the honest estimate for images the rule has not seen. Also how many of
the images where Omnipose is better the best rule sends to Omnipose, and how many worse ones.
"""
from __future__ import annotations

import argparse
import itertools
import math

import numpy as np
import pandas as pd

from utils.modality import MODALITIES
from utils.routing import DEFAULT_ROUTING, OmniRule, leave_one_out, load_routing

# Grid of (awf_conf_below, omni_margin, diameter_ratio_above). The first entry never switches,
# so ties go to AWF alone; 1.01 / -1.0 / 0.0 switch always by one test.
BELOW = (0.0, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 1.01)
MARGIN = (1.0, 0.1, 0.05, 0.0, -1.0)
RATIO = (math.inf, 1.5, 1.25, 1.15, 1.1, 1.05, 1.025, 1.0, 0.0)
GRID = list(itertools.product(BELOW, MARGIN, RATIO))


def merge(awf_csv: str, omni_csv: str) -> pd.DataFrame:
    """One row per image: modality, and F1, confidence and diameter of both branches."""
    cols = ["names", "modality", "F1", "confidence", "diameter"]
    a = pd.read_csv(awf_csv)
    o = pd.read_csv(omni_csv)
    missing = [c for c in cols if c not in a or c not in o]
    if missing:
        raise SystemExit(f"column(s) {missing} missing: rerun evaluate.py (it writes them)")
    return a[cols].merge(o[cols].drop(columns="modality"), on="names", suffixes=("_awf", "_omni"))


def takes(frame: pd.DataFrame, rule: OmniRule) -> np.ndarray:
    """``(N,) bool``: the images the rule sends to Omnipose."""
    cols = ["confidence_awf", "confidence_omni", "diameter_awf", "diameter_omni"]
    return np.asarray(rule.prefer_omnipose(*(frame[c].to_numpy() for c in cols)), bool)


def grid_rule(below: float, margin: float, ratio: float) -> OmniRule:
    """A rule of the grid, on every modality (the frame says which images it is scored on)."""
    return OmniRule(enabled=True, modalities=list(MODALITIES), awf_conf_below=below,
                    omni_margin=margin, diameter_ratio_above=ratio)


def grid_scores(frame: pd.DataFrame) -> np.ndarray:
    """``(len(GRID), N)``: each image's F1 under each grid rule."""
    a, o = frame["F1_awf"].to_numpy(), frame["F1_omni"].to_numpy()
    return np.stack([np.where(takes(frame, grid_rule(*values)), o, a) for values in GRID])


def report(frame: pd.DataFrame, name: str, configured: OmniRule) -> None:
    scores = grid_scores(frame)
    best = int(scores.sum(axis=1).argmax())
    b, m, r = GRID[best]
    sent = takes(frame, grid_rule(b, m, r))
    better = (frame["F1_omni"] > frame["F1_awf"]).to_numpy()
    worse = (frame["F1_omni"] < frame["F1_awf"]).to_numpy()
    applies = frame["modality"].isin(configured.modalities).to_numpy() & configured.enabled
    configured_f1 = np.where(applies & takes(frame, configured), frame["F1_omni"], frame["F1_awf"]).mean()
    oracle = frame[["F1_awf", "F1_omni"]].max(axis=1).mean()
    print(f"{name:<4} n={len(frame):<3} AWF {frame['F1_awf'].mean():.4f}  Omnipose "
          f"{frame['F1_omni'].mean():.4f}  oracle {oracle:.4f}  configured rule {configured_f1:.4f}  "
          f"best grid rule (below {b}, margin {m}, ratio {r}) {scores[best].mean():.4f} in-sample, "
          f"leave-one-out {leave_one_out(scores):.4f}; it sends {int((sent & better).sum())} of "
          f"{int(better.sum())} better image(s) and {int((sent & worse).sum())} of {int(worse.sum())} "
          "worse one(s) to Omnipose")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("awf_csv")
    ap.add_argument("omni_csv")
    ap.add_argument("--routing", default=str(DEFAULT_ROUTING), help="the configured rule to score")
    ap.add_argument("--modalities", nargs="+", default=None, help="default: every modality")
    args = ap.parse_args(argv)
    frame = merge(args.awf_csv, args.omni_csv)
    configured = load_routing(args.routing).omni_rule
    if args.modalities:
        frame = frame[frame["modality"].isin(args.modalities)]
    for m, g in frame.groupby("modality"):
        report(g, m, configured)
    report(frame, "all", configured)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
