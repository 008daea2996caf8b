"""Measure the Omnipose routing rule (data/routing.yaml omni_rule) from two evaluate.py runs.

Run evaluate.py twice on the same labelled images, once with the AWF checkpoint and once with the
Omnipose checkpoint (``--ckpt``), then:

    python -m benchmarks.omni_rule AWF.csv OMNI.csv [--modalities gs]

For each modality it prints the mean F1 of AWF alone, Omnipose alone, the per-image oracle (the
better of the two), and the rule ``prefer Omnipose if awf_conf < below or omni_conf > awf_conf +
margin`` for the original framework's values and a grid of others (confidence = the CSV's
``confidence`` column: mean foreground probability over pixels above 0.5).
"""
from __future__ import annotations

import argparse
import itertools

import pandas as pd

from utils.routing import OmniRule

BELOW = (0.0, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 1.01)  # 0: never by the first test, 1.01: always
MARGIN = (-1.0, 0.0, 0.05, 0.1, 0.2, 1.0)            # -1: always by the second test, 1: never


def merge(awf_csv: str, omni_csv: str) -> pd.DataFrame:
    """One row per image: modality, F1 and confidence of both branches."""
    cols = ["names", "modality", "F1", "confidence"]
    a = pd.read_csv(awf_csv)[cols]
    o = pd.read_csv(omni_csv)[cols].drop(columns="modality")
    return a.merge(o, on="names", suffixes=("_awf", "_omni"))


def rule_f1(frame: pd.DataFrame, rule: OmniRule) -> float:
    """Mean F1 when each image takes the branch the rule picks."""
    take = [rule.prefer_omnipose(a, o) for a, o in zip(frame["confidence_awf"], frame["confidence_omni"])]
    return float(frame["F1_omni"].where(take, frame["F1_awf"]).mean())


def report(frame: pd.DataFrame, name: str) -> None:
    default = OmniRule()
    best = max(itertools.product(BELOW, MARGIN),
               key=lambda bm: rule_f1(frame, OmniRule(awf_conf_below=bm[0], omni_margin=bm[1])))
    oracle = frame[["F1_awf", "F1_omni"]].max(axis=1).mean()
    print(f"{name:<6} n={len(frame):<4} AWF {frame['F1_awf'].mean():.4f}  Omnipose "
          f"{frame['F1_omni'].mean():.4f}  oracle {oracle:.4f}  rule({default.awf_conf_below}, "
          f"{default.omni_margin}) {rule_f1(frame, default):.4f}  best grid rule{best} "
          f"{rule_f1(frame, OmniRule(awf_conf_below=best[0], omni_margin=best[1])):.4f}  "
          f"Omnipose better on {(frame['F1_omni'] > frame['F1_awf']).sum()} image(s)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("awf_csv")
    ap.add_argument("omni_csv")
    ap.add_argument("--modalities", nargs="+", default=None, help="default: every modality")
    args = ap.parse_args(argv)
    frame = merge(args.awf_csv, args.omni_csv)
    for m, g in frame.groupby("modality"):
        if args.modalities is None or m in args.modalities:
            report(g, m)
    report(frame, "all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
