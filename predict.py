"""Segment images: INPUT/NAME.ext -> OUTPUT/NAME_label.tiff.

    python predict.py -i inputs -o outputs                      # branches from data/routing.yaml
    python predict.py -i examples/fl_cells.png -o out           # one image
    python predict.py -i 'data/*/img_*.png' -o out --filter _c0 --chan 2 --chan2 3 --diameter 30
    python predict.py -i plates -o out --recursive              # out/WELL/NAME_label.tiff
    python predict.py -i inputs -o outputs --ckpt best.pt       # one checkpoint for all images
    python predict.py -i unlabeled/images -o unlabeled/labels --ckpt multiscale.pt --pseudo
    python predict.py -i data/semi_labeled.yaml -o runs/pseudo/semi --ckpt best.pt --pseudo

Input: an image, a folder of images (--recursive: and of its subfolders), a quoted glob pattern,
a list file (.txt: one image path per line, relative to the list file's folder; blank lines and
# comments skipped), or a dataset YAML whose ``unlabeled`` split is segmented.
--pseudo (pseudo labels for train_weakly.py) also writes OUTPUT/NAME_ignore.png (uncertain
background, left out of the loss) and OUTPUT/confidence.csv (name, image, confidence, ...), which
a dataset YAML names as a ``pseudo`` entry: the dataset folder when OUTPUT is its labels/ folder,
else the path of OUTPUT/confidence.csv (see utils.datasplits.resolve_split). The CSV (else
OUTPUT/predictions.csv) gets one row per image as it finishes, failures included (status, error);
--skip-existing reruns only what an interrupted run left undone.
    torchrun --nproc_per_node 2 predict.py -i inputs -o outputs --device 0,1   # input sharded
"""
import argparse
import logging
import sys
from pathlib import Path

from utils.cli import (HelpFormatter, add_common_args, add_prediction_args, prediction_kwargs,
                       setup)
from utils.dist import dist_info, select_device
from utils.errors import USER_ERRORS
from utils.io import InputError, check_output_dir
from utils.predict_folder import (empty_input_status, input_files, predict_files,
                                  report_failures, shard)
from utils.predictor import Predictor

LOGGER = logging.getLogger("predict")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    p.add_argument("-i", "--input", required=True,
                   help="an image (bmp/png/jpg/tif), a folder of images, a quoted glob pattern "
                        "('data/*/img_*.png'; ** = any depth), a list file (.txt: one path per "
                        "line, relative to its folder; # comments), or a dataset YAML (its "
                        "unlabeled split)")
    p.add_argument("-o", "--output", required=True, help="folder for NAME_label.tiff files")
    p.add_argument("--recursive", action="store_true",
                   help="with a folder input, also the images of its subfolders; the outputs "
                        "mirror them (INPUT/SUB/NAME.png -> OUTPUT/SUB/NAME_label.tiff). Without "
                        "it, two inputs of the same name (a glob or list over several folders): "
                        "the second fails, in one line, and nothing is overwritten")
    p.add_argument("--filter", default="", metavar="SUFFIX",
                   help="only the images whose name (without extension) ends with SUFFIX, e.g. "
                        "_c0 (Cellpose's --img_filter)")
    add_prediction_args(p)
    p.add_argument("--save-overlay", action="store_true", help="also write NAME_overlay.png")
    p.add_argument("--save-rois", action="store_true",
                   help="also write NAME_rois.zip: an ImageJ/Fiji ROI set, one polygon per cell")
    p.add_argument("--save-geojson", action="store_true",
                   help="also write NAME.geojson: cell polygons for QuPath (pixels, origin top-left)")
    p.add_argument("--pseudo", action="store_true",
                   help="pseudo-label mode: also write NAME_ignore.png and confidence.csv "
                        "for train_weakly.py")
    p.add_argument("--skip-existing", action="store_true",
                   help="skip the images that OUTPUT's predictions.csv (confidence.csv) lists as "
                        "done and whose label exists: finishes an interrupted run")
    p.add_argument("--allow-empty", action="store_true",
                   help="an input without images exits 0 (else 2)")
    add_common_args(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup(args.quiet)
    info = dist_info()
    try:
        files = input_files(args.input, args.recursive, args.filter)
        check_output_dir(args.output)
    except InputError as exc:
        LOGGER.error("%s", exc)
        return 2
    if not files:
        return empty_input_status(args.input, args.allow_empty)
    try:
        predictor = Predictor.from_config(**{**prediction_kwargs(args),
                                             "device": select_device(args.device, info)})
    except USER_ERRORS as exc:  # a missing or refused checkpoint, a bad routing YAML or flag
        LOGGER.error("%s", exc)
        return 2
    suffix = f"_rank{info.rank}" if info.distributed else ""
    csv_path = Path(args.output) / (("confidence" if args.pseudo else "predictions") + suffix + ".csv")
    summary, _ = predict_files(shard(files, info.rank, info.world_size), predictor.router,
                               args.output, save_overlay=args.save_overlay,
                               progress=info.is_main and not args.quiet, pseudo=args.pseudo,
                               records_csv=csv_path, skip_existing=args.skip_existing,
                               save_rois=args.save_rois, save_geojson=args.save_geojson,
                               channels=predictor.channels,
                               root=args.input if args.recursive else None)
    LOGGER.info("%d image(s) segmented%s, %d failed; labels%s in %s, records in %s",
                len(summary.records), f", {summary.skipped} already done" if summary.skipped else "",
                len(summary.failures), " and overlays" if args.save_overlay else "",
                Path(args.output).resolve(), csv_path.name)
    return report_failures(summary)


if __name__ == "__main__":
    sys.exit(main())
