"""Leave one source out: a kind of image the weights never saw, zero-shot and after finetune.py.

    python -m benchmarks.unseen --source ctc_dic --weights NEVER_SAW_IT.pt --k 1 3 10 --minutes 15
    python -m benchmarks.unseen --source monuseg --weights NEVER_SAW_IT.pt

The developers' stand-in for "a kind never seen": ``--weights`` must be a checkpoint that never
trained on ``--source`` (e.g. the general model trained on DSB2018 + Usiigaci only, which saw no
CTC frame and no H&E tile). The source's images (every split of the dataset YAML whose
``sources`` entry matches) are ordered by name (time for CTC) and cut in two: a pool of the
first ``pool`` images to finetune from and, after ``guard`` images left out (time-lapse
neighbours are near-duplicates), the test images, the same for every K. Zero-shot is
``--weights`` on the test images; for each K, finetune.py's own code (utils.finetune.run_finetune,
its defaults: from 3 images on, 1 in 5 held back to measure, then a refit on all K) runs on K pool
images spread evenly over the pool, then the finetuned weights are scored on the test images.
Scores: the challenge metric (F1 at IoU 0.5, mean over images) with predict.py's pipeline. Rows
are appended to ``PROJECT/unseen.csv`` as each run finishes, and printed as a table.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from utils.cli import setup_logging
from utils.config import load_data_config
from utils.datasplits import resolve_split
from utils.dist import select_device
from utils.finetune import FinetuneOptions, run_finetune, score_checkpoint
from utils.io import atomic_write

LOGGER = logging.getLogger("unseen")

# Pool / guard per source (this project's choice): CTC sequences are time-lapse, so the pool is a
# block of early frames and a guard of frames separates it from the test frames; MoNuSeg tiles
# are independent patients.
SPLITS = {"ctc_dic": (30, 5), "ctc_psc": (20, 4), "ctc_fluo": (12, 2), "monuseg": (10, 0),
          "usiigaci": (10, 0), "dsb2018": (10, 0)}
DEFAULT_SPLIT = (10, 0)


def source_pairs(data_yaml: str, source: str) -> list[tuple[Path, Path]]:
    """(image, label) pairs of one named source over every split of a dataset YAML, by name."""
    cfg = load_data_config(data_yaml)
    if source not in cfg.sources:
        raise SystemExit(f"{data_yaml}: no source {source!r} (sources: {', '.join(cfg.sources)})")
    samples = [s for split in ("train", "val") if getattr(cfg, split)
               for s in resolve_split(cfg, split) if s.source == source]
    return sorted({(s.image, s.label) for s in samples}, key=lambda p: p[0].name)


def pool_and_test(pairs: list, pool: int, guard: int) -> tuple[list, list]:
    """The first ``pool`` pairs, and the pairs after ``guard`` more (at least one test pair)."""
    if len(pairs) < pool + guard + 1:
        raise SystemExit(f"{len(pairs)} images: too few for a pool of {pool} and a guard of {guard}")
    return pairs[:pool], pairs[pool + guard:]


def spread(pool: list, k: int) -> list:
    """``k`` pairs spread evenly over the pool (first and last included for k >= 2)."""
    idx = np.unique(np.linspace(0, len(pool) - 1, k).round().astype(int))
    return [pool[i] for i in idx]


def link_folder(pairs: list, root: Path) -> Path:
    """A challenge-layout folder of symbolic links to ``pairs``; returns its images/ folder."""
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image, label in pairs:
        for src, sub in ((image, "images"), (label, "labels")):
            dst = root / sub / src.name
            if not dst.exists():
                dst.symlink_to(src.resolve())
    return root / "images"


def append_row(path: Path, row: dict) -> None:
    """Append ``row`` to the CSV; a CSV with other columns (an older version's) is rewritten
    with both sets of columns, its rows kept."""
    frame = pd.DataFrame([row])
    if path.exists():
        columns = list(pd.read_csv(path, nrows=0).columns)
        if set(columns) != set(frame.columns):
            old = pd.read_csv(path)
            with atomic_write(path) as tmp:
                pd.concat([old, frame], ignore_index=True).to_csv(tmp, index=False)
            return
        frame = frame[columns]
    frame.to_csv(path, mode="a", header=not path.exists(), index=False)


# Columns of finetune.py's threshold tuning (NaN for zero-shot rows and runs without a tuning),
# the same in every row of the CSV: tune_trained, swept on the training images (else the
# held-back ones); tune_val_*: F1 on those images.
TUNING_COLUMNS = ("tune_trained", "tune_cells", "tune_val_routing", "tune_val_best", "tune_pair",
                  "tune_stored", "f1_routing", "f1_best_pair")


def tuning_columns(tuning, weights: Path, test: list, f1: float, device) -> dict:
    """finetune.py's threshold tuning and what it does on the test images: F1 with
    data/routing.yaml's pair and with the tuning's best pair (one of the two
    is ``f1``, the pair the checkpoint carries; the other is scored here)."""
    if tuning is None:
        return dict.fromkeys(TUNING_COLUMNS, np.nan)
    stored = bool(tuning.settings)
    other = tuning.routing if stored else tuning.best
    f1_other = float(np.mean(score_checkpoint(weights, test, None, device, "auto", **other)))
    return {"tune_trained": tuning.trained, "tune_cells": tuning.cells,
            "tune_val_routing": round(tuning.default_f1, 4),
            "tune_val_best": round(tuning.best_f1, 4),
            "tune_pair": f"{tuning.best['conf_thres']}/{tuning.best['iou_thres']}",
            "tune_stored": stored, "f1_routing": f1_other if stored else f1,
            "f1_best_pair": f1 if stored else f1_other}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/cells.yaml", help="dataset YAML with sources")
    p.add_argument("--source", required=True, help="the source held out, e.g. ctc_dic")
    p.add_argument("--weights", required=True, help="a checkpoint that never saw --source")
    p.add_argument("--k", type=int, nargs="*", default=[1, 3, 10],
                   help="images to finetune on, one run each (none: zero-shot only)")
    p.add_argument("--minutes", type=float, default=FinetuneOptions.minutes,
                   help="finetune.py --minutes per run (default: finetune.py's for this machine)")
    p.add_argument("--pool", type=int, default=None, help="pool size (default: per source)")
    p.add_argument("--guard", type=int, default=None, help="images between pool and test")
    p.add_argument("--seed", type=int, default=0,
                   help="finetune.py --seed (training draws and the held-back choice)")
    p.add_argument("--no-val", dest="hold_back", action="store_false",
                   help="finetune.py --no-val: all K images train, none held back")
    p.add_argument("--device", default="", help="cuda device or cpu")
    p.add_argument("--project", default="runs/unseen", help="folder of the runs and the CSV")
    p.add_argument("--tag", default="", help="a label for this base in the CSV (e.g. before)")
    args = p.parse_args(argv)
    setup_logging()
    pool_n, guard = SPLITS.get(args.source, DEFAULT_SPLIT)
    pool_n = args.pool if args.pool is not None else pool_n
    guard = args.guard if args.guard is not None else guard
    pool, test = pool_and_test(source_pairs(args.data, args.source), pool_n, guard)
    device = select_device(args.device)
    project = Path(args.project)
    project.mkdir(parents=True, exist_ok=True)
    out = project / "unseen.csv"
    common = {"source": args.source, "weights": Path(args.weights).name, "tag": args.tag,
              "seed": args.seed, "held_back": args.hold_back, "n_test": len(test)}
    t0 = time.time()
    zero = float(np.mean(score_checkpoint(Path(args.weights), test, None, device, "auto")))
    append_row(out, {**common, "k": 0, "f1": zero, "minutes": 0.0, "epochs": 0,
                     "scoring_s": round(time.time() - t0, 1), "f1_val": np.nan,
                     **dict.fromkeys(TUNING_COLUMNS, np.nan)})
    LOGGER.info("%s zero-shot: F1 %.3f on %d test images", args.source, zero, len(test))
    for k in args.k:
        chosen = spread(pool, k)
        name = f"{args.source}_k{k}{'_' + args.tag if args.tag else ''}"
        images = link_folder(chosen, project / "inputs" / name)
        r = run_finetune(FinetuneOptions(images=str(images), weights=args.weights,
                                         minutes=args.minutes, device=args.device, seed=args.seed,
                                         hold_back=args.hold_back, name=name, project=str(project)))
        t1 = time.time()
        f1 = float(np.mean(score_checkpoint(r.weights, test, None, device, "auto")))
        append_row(out, {**common, "k": k, "f1": f1, "minutes": round(r.minutes, 2),
                         "epochs": r.epochs + r.refit_epochs,
                         "scoring_s": round(time.time() - t1, 1), "f1_val": r.after,
                         **tuning_columns(r.tuning, r.weights, test, f1, device)})
        LOGGER.info("%s K=%d: F1 %.3f on the test images (zero-shot %.3f), %.1f min", args.source,
                    k, f1, zero, r.minutes)
    frame = pd.read_csv(out)
    print(frame[frame.source == args.source].to_string(index=False))


if __name__ == "__main__":
    main()
