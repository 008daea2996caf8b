"""Sweep the detection settings (confidence and NMS IoU thresholds) on a labelled set.

    python -m utils.tune_nms --ckpt best.pt --data data/real.yaml --split val \
        --conf 0.05 0.1 0.15 0.2 0.25 0.3 --iou 0.2 0.25 0.3 0.35 0.45 -o runs/tune_nms.csv

The network runs once per image; every (conf, iou) pair then re-runs NMS, the watershed
post-processing and the challenge metric, with predict.py's max_det and post-processing. Prints
the best pair per modality (the values for the ``detection`` section of data/routing.yaml) and
the F1 of the pairs the routing YAML (``--routing``) sets now, the figures predict.py scores.
"""
from __future__ import annotations

import argparse
import itertools
import logging

import pandas as pd
import torch
from tqdm import tqdm

from models.loading import load_model
from utils.branch_settings import BranchSettings
from utils.cli import setup_logging
from utils.config import load_data_config
from utils.datasplits import resolve_split
from utils.inference import AWFSegmenter, resize_image, resize_label
from utils.io import check_output_file, write_table
from utils.label_cache import DatasetCache
from utils.metrics import match_instances
from utils.modality import MODALITIES
from utils.nms import non_max_suppression
from utils.precision import MODES, log_precision, resolve_precision
from utils.routing import DEFAULT_ROUTING, load_routing
from utils.watershed import PostprocessParams, postprocess

LOGGER = logging.getLogger(__name__)


def sweep(segmenter: AWFSegmenter, items, confs, ious, settings: dict[str, BranchSettings],
          post: PostprocessParams | None = None, scale: float = 1.0) -> pd.DataFrame:
    """``items``: (name, modality, network image, GT label); ``settings``: modality -> its
    detection settings now (data/routing.yaml). One row per image and (conf, iou) pair of the
    grid and for the image's configured pair, with the challenge metric's F1, precision and
    recall at IoU 0.5; columns ``grid`` and ``configured`` say which the pair is. ``scale``:
    the network sees each image resized by it (as ``InferenceParams.scale``), the labels are
    mapped back to the image's size before scoring."""
    rows = []
    for name, modality, image, gt in tqdm(items, desc="sweep", unit="img", leave=False):
        h, w = image.shape[:2]
        pred, fg, height = segmenter.raw_outputs(resize_image(image, scale))
        s = settings[modality]
        pairs = {pair: (True, False) for pair in itertools.product(confs, ious)}
        pairs[(s.conf_thres, s.iou_thres)] = ((s.conf_thres, s.iou_thres) in pairs, True)
        for (conf, iou), (grid, configured) in pairs.items():
            det = non_max_suppression(pred[None], conf, iou, s.max_det)[0].cpu().numpy()
            label = postprocess(det[:, :4], det[:, 4], fg, height, post)
            r = match_instances(gt, resize_label(label, h, w))
            rows.append({"name": name, "modality": modality, "conf_thres": conf, "iou_thres": iou,
                         "grid": grid, "configured": configured,
                         "f1": r.f1, "precision": r.precision, "recall": r.recall})
    return pd.DataFrame(rows)


def configured_scores(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean F1 of the configured pairs per modality and overall (what predict.py scores)."""
    rows = frame[frame["configured"]]
    table = rows.groupby("modality", as_index=False).agg(
        conf_thres=("conf_thres", "first"), iou_thres=("iou_thres", "first"), f1=("f1", "mean"))
    return pd.concat([table, pd.DataFrame([{"modality": "all", "f1": rows["f1"].mean()}])],
                     ignore_index=True)


def best_per_modality(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean F1 per (modality, conf, iou) of the grid; the best pair of each modality and overall."""
    frame = frame[frame["grid"]]
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
    p.add_argument("--routing", default=str(DEFAULT_ROUTING),
                   help="routing YAML whose per-modality settings are scored beside the grid")
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
    routing = load_routing(args.routing)
    seg = AWFSegmenter(load_model(args.ckpt, kind="awf"), device,
                       # max_det and the post-processing (the same for every modality); conf and iou are swept
                       routing.inference_params(MODALITIES[0]), precision=precision)
    items = ((s.image.stem, cache.modality(s), cache.image(s), cache.label(s)) for s in samples)
    frame = sweep(seg, list(items), args.conf, args.iou, routing.detection, seg.params.post)
    write_table(frame, args.output)
    print("best of the grid:")
    print(best_per_modality(frame).to_string(index=False))
    print(f"configured ({args.routing}):")
    print(configured_scores(frame).to_string(index=False))


if __name__ == "__main__":
    from utils.errors import exit_on_error
    exit_on_error(main)
