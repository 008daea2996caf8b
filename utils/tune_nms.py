"""Sweep the detection settings (confidence and NMS IoU thresholds) on a labelled set.

    python -m utils.tune_nms --ckpt best.pt --data data/real.yaml --split val \
        --conf 0.05 0.1 0.15 0.2 0.25 0.3 --iou 0.2 0.25 0.3 0.35 0.45 -o runs/tune_nms.csv

The network runs once per image; every (conf, iou) pair then re-runs NMS, the watershed
post-processing and the challenge metric. Prints the best pair per modality: the values for
the ``postprocess`` section of data/routing.yaml.
"""
from __future__ import annotations

import argparse
import itertools
import logging

import pandas as pd
import torch
from tqdm import tqdm

from models.loading import load_model
from utils.cli import setup_logging
from utils.config import load_data_config
from utils.datasplits import resolve_split
from utils.inference import AWFSegmenter
from utils.io import check_output_file, write_table
from utils.label_cache import DatasetCache
from utils.metrics import match_instances
from utils.routing import MODALITIES
from utils.nms import non_max_suppression
from utils.precision import MODES, log_precision, resolve_precision
from utils.watershed import PostprocessParams, postprocess

LOGGER = logging.getLogger(__name__)


def sweep(segmenter: AWFSegmenter, items, confs, ious, max_det: int = 3000,
          post: PostprocessParams | None = None) -> pd.DataFrame:
    """``items``: (name, modality, network image, GT label). One row per image and pair with the
    challenge metric's F1, precision and recall at IoU 0.5."""
    rows = []
    for name, modality, image, gt in tqdm(items, desc="sweep", unit="img"):
        pred, fg, height = segmenter.raw_outputs(image)
        for conf, iou in itertools.product(confs, ious):
            det = non_max_suppression(pred[None], conf, iou, max_det)[0].cpu().numpy()
            label = postprocess(det[:, :4], det[:, 4], fg, height, post)
            r = match_instances(gt, label)
            rows.append({"name": name, "modality": modality, "conf_thres": conf, "iou_thres": iou,
                         "f1": r.f1, "precision": r.precision, "recall": r.recall})
    return pd.DataFrame(rows)


def best_per_modality(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean F1 per (modality, conf, iou); the best pair of each modality and overall."""
    mean = frame.groupby(["modality", "conf_thres", "iou_thres"], as_index=False)["f1"].mean()
    overall = frame.groupby(["conf_thres", "iou_thres"], as_index=False)["f1"].mean().assign(modality="all")
    table = pd.concat([mean, overall], ignore_index=True)
    return table.loc[table.groupby("modality")["f1"].idxmax()].reset_index(drop=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--data", required=True, help="dataset YAML with the labelled images")
    p.add_argument("--split", default="val")
    p.add_argument("--conf", type=float, nargs="+", default=[0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4])
    p.add_argument("--iou", type=float, nargs="+", default=[0.2, 0.25, 0.3, 0.35, 0.45, 0.6])
    p.add_argument("--modality", nargs="+", choices=MODALITIES, default=None,
                   help="sweep only the images of these modalities (default: all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="auto", choices=MODES, help="precision (utils.precision)")
    p.add_argument("-o", "--output", default="runs/tune_nms.csv")
    args = p.parse_args(argv)
    setup_logging()
    check_output_file(args.output)  # before the sweep: a bad -o must not waste it
    samples = resolve_split(load_data_config(args.data), args.split)
    cache = DatasetCache(samples, "runs/cache")
    if args.modality:
        samples = [s for s in samples if cache.modality(s) in args.modality]
        LOGGER.info("%d images of modality %s", len(samples), "/".join(args.modality))
    device = torch.device(args.device)
    precision = resolve_precision(args.amp, device)
    log_precision(precision, "inference")
    seg = AWFSegmenter(load_model(args.ckpt, kind="awf"), device, precision=precision)
    items = ((s.image.stem, cache.modality(s), cache.image(s), cache.label(s)) for s in samples)
    frame = sweep(seg, list(items), args.conf, args.iou)
    write_table(frame, args.output)
    print(best_per_modality(frame).to_string(index=False))


if __name__ == "__main__":
    from utils.errors import exit_on_error
    exit_on_error(main)
