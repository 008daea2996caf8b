"""Predict every image of a labelled NeurIPS-layout folder and score it with the challenge metric.

    python evaluate.py -i LABELED_DIR -o evaluate_detail.csv --ckpt best.pt
    python evaluate.py -i ../shared/data/dsb2018 --list data/splits/dsb2018_val.txt --ckpt best.pt
    python evaluate.py -i ../shared/data/usiigaci ../shared/data/ctc       # several folders
    python evaluate.py -i data/cells.yaml --split val     # a dataset YAML's split, by its sources

LABELED_DIR holds images/ and labels/NAME_label.tiff. Writes a per-image CSV (the challenge
columns plus modality, branch, confidence, diameter, scale and seconds; confidence is the mean
foreground probability over pixels above 0.5 and diameter the median cell diameter in pixels, the
inputs of the Omnipose routing rule; scale the resize factor of the pass kept, utils/sizing.py)
and prints the mean
and median F1 overall, per source (the folder's name, or the YAML's ``sources``) and per modality.
Prediction is predict.py's code, scoring is compute_metric.py's.
"""
import argparse
import logging
import sys
import tempfile
from pathlib import Path

import pandas as pd

from utils.cli import (HelpFormatter, add_common_args, add_prediction_args, prediction_kwargs,
                       setup)
from utils.errors import USER_ERRORS
from utils.config import ConfigError, load_data_config
from utils.datasplits import read_split_file, resolve_split
from utils.io import (LABEL_SUFFIX, InputError, check_output_dir, check_output_file, label_path_for,
                      list_images, failure_reason, read_label, write_table)
from utils.metrics import RESULT_COLUMNS, match_instances, results_to_frame
from utils.predict_folder import empty_input_status, predict_files, report_failures
from utils.predictor import Predictor

LOGGER = logging.getLogger("evaluate")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    p.add_argument("-i", "--input", required=True, nargs="+",
                   help="folder(s) with images/ and labels/, or a dataset YAML (see --split)")
    p.add_argument("--split", default="val", help="with a dataset YAML: the split to evaluate")
    p.add_argument("-o", "--output", default="evaluate_detail.csv", help="per-image CSV")
    p.add_argument("--list", default=None,
                   help="optional split file of image paths (relative to the input's parent)")
    p.add_argument("--save-dir", default=None, help="keep the predicted labels here")
    p.add_argument("--threshold", type=float, default=0.5, help="IoU threshold of a match")
    p.add_argument("--allow-empty", action="store_true",
                   help="an input without images exits 0 (else 2)")
    add_prediction_args(p)
    add_common_args(p)
    return p.parse_args(argv)


def image_files(root: Path, split: str | None) -> list[Path]:
    """The images to evaluate: all of root/images, or those under root that a split file names
    (read as training reads them: utils.datasplits.read_split_file)."""
    if split is None:
        return list_images(root / "images")
    files = [f for f in read_split_file(split, root.parent, "--list")
             if f.parent.parent.resolve() == root.resolve()]
    if not files:
        raise InputError(split, f"lists no image under {root}")
    return files


def evaluation_files(inputs: list[str], split_list: str | None, split: str) -> list[tuple[Path, str]]:
    """``(image, source)`` pairs: a dataset YAML's ``split`` (sources from its ``sources``, else
    the image's folder), or each folder's images (source = the folder's name)."""
    if len(inputs) == 1 and Path(inputs[0]).suffix.lower() in (".yaml", ".yml"):
        try:
            samples = resolve_split(load_data_config(inputs[0]), split)
        except ConfigError as exc:
            raise InputError(inputs[0], str(exc)) from None
        return [(s.image, s.source or s.image.parent.parent.name) for s in samples]
    out = []
    for folder in map(Path, inputs):
        out += [(f, folder.resolve().name) for f in image_files(folder, split_list)]
    return out


def score(files, labels: dict, records) -> tuple[pd.DataFrame, list[str]]:
    """Challenge metric of every predicted image against labels/NAME_label.tiff."""
    by_name = {r.name: r for r in records}
    names, results, extra, failures = [], [], [], []
    for path in files:
        if path.stem not in labels:
            continue
        try:
            gt = read_label(label_path_for(path, path.parent.parent / "labels"),
                            shape=labels[path.stem].shape)
            result = match_instances(gt, labels[path.stem])
        except Exception as exc:  # noqa: BLE001 - whatever one file raises fails that file only
            failures.append(f"{path}: {failure_reason(exc)}")
            continue
        names.append(path.stem + "_label.tiff")
        results.append(result)
        rec = by_name[path.stem]
        extra.append({"modality": rec.modality, "branch": rec.branch, "confidence": rec.confidence,
                      "diameter": rec.diameter, "scale": rec.scale,
                      "seconds": rec.seconds})
    frame = results_to_frame(names, results)
    return pd.concat([frame, pd.DataFrame(extra)], axis=1), failures


def print_summary(frame: pd.DataFrame) -> None:
    """Mean and median F1: all images, then per source (when several), then per modality."""
    print(f"{'group':<16}{'n':>5}{'mean F1':>10}{'median F1':>11}")
    groups = [("all", frame)]
    if frame["source"].nunique() > 1:
        groups += [(f"source {s}", g) for s, g in frame.groupby("source", sort=False)]
    groups += [(f"modality {m}", g) for m, g in frame.groupby("modality")]
    for name, g in groups:
        print(f"{name:<16}{len(g):>5}{g['F1'].mean():>10.4f}{g['F1'].median():>11.4f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    setup(args.quiet)
    try:
        pairs = evaluation_files(args.input, args.list, args.split)
        check_output_file(args.output)  # before the predictions: a bad -o must not waste them
        if args.save_dir:
            check_output_dir(args.save_dir)
    except InputError as exc:
        LOGGER.error("%s", exc)
        return 2
    files = [f for f, _ in pairs]
    if not files:
        return empty_input_status(", ".join(args.input), args.allow_empty)
    try:
        predictor = Predictor.from_config(**prediction_kwargs(args))
    except USER_ERRORS as exc:  # a missing or refused checkpoint, a bad routing YAML or flag
        LOGGER.error("%s", exc)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        summary, labels = predict_files(files, predictor.router, args.save_dir or tmp,
                                        keep_labels=True, progress=not args.quiet,
                                        channels=predictor.channels)
    frame, failures = score(files, labels, summary.records)
    source = {f.stem: s for f, s in pairs}
    frame["source"] = [source[n[: -len(LABEL_SUFFIX)]] for n in frame["names"]]
    summary.failures += failures
    written = write_table(frame, args.output)
    if len(frame):
        print_summary(frame)
    LOGGER.info("per-image results in %s (columns: %s, modality, branch, confidence, "
                "diameter, scale, seconds, source)", written, ", ".join(RESULT_COLUMNS))
    status = report_failures(summary)
    return status or int(written != Path(args.output))


if __name__ == "__main__":
    sys.exit(main())
