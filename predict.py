"""Segment every image of a folder: INPUT/NAME.ext -> OUTPUT/NAME_label.tiff.

    python predict.py -i inputs -o outputs                      # branches from data/routing.yaml
    python predict.py -i inputs -o outputs --ckpt best.pt       # one checkpoint for all images
    python predict.py -i unlabeled/images -o unlabeled/labels --ckpt multiscale.pt --pseudo
    python predict.py -i data/semi_labeled.yaml -o runs/pseudo/semi --ckpt best.pt --pseudo

Input: a folder of images, or a dataset YAML whose ``unlabeled`` split is segmented.
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

from utils.cli import add_prediction_args, router_from_args, setup_logging
from utils.dist import dist_info, select_device
from utils.errors import USER_ERRORS
from utils.io import InputError, check_output_dir, list_images
from utils.predict_folder import empty_input_status, predict_files, report_failures, shard

LOGGER = logging.getLogger("predict")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-i", "--input", required=True,
                   help="folder of images (bmp/png/jpg/tif), or a dataset YAML (its unlabeled split)")
    p.add_argument("-o", "--output", required=True, help="folder for NAME_label.tiff files")
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
    return p.parse_args(argv)


def input_files(source: str) -> list[Path]:
    """Images of ``-i``: a folder's images, or the ``unlabeled`` split of a dataset YAML."""
    if Path(source).suffix.lower() in (".yaml", ".yml"):
        from utils.config import ConfigError, load_data_config
        from utils.datasplits import resolve_split
        try:
            return [s.image for s in resolve_split(load_data_config(source), "unlabeled")]
        except ConfigError as exc:
            raise InputError(source, str(exc)) from None
    return list_images(source)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging()
    info = dist_info()
    device = select_device(args.device, info)
    try:
        files = input_files(args.input)
        check_output_dir(args.output)
    except InputError as exc:
        LOGGER.error("%s", exc)
        return 2
    if not files:
        return empty_input_status(args.input, args.allow_empty)
    try:
        router = router_from_args(args, device)
    except USER_ERRORS as exc:  # a missing or refused checkpoint, a bad routing YAML or flag
        LOGGER.error("%s", exc)
        return 2
    suffix = f"_rank{info.rank}" if info.distributed else ""
    csv_path = Path(args.output) / (("confidence" if args.pseudo else "predictions") + suffix + ".csv")
    summary, _ = predict_files(shard(files, info.rank, info.world_size), router, args.output,
                               save_overlay=args.save_overlay, progress=info.is_main,
                               pseudo=args.pseudo, records_csv=csv_path,
                               skip_existing=args.skip_existing,
                               save_rois=args.save_rois, save_geojson=args.save_geojson)
    LOGGER.info("%d image(s) segmented%s, %d failed; labels%s in %s, records in %s",
                len(summary.records), f", {summary.skipped} already done" if summary.skipped else "",
                len(summary.failures), " and overlays" if args.save_overlay else "",
                Path(args.output).resolve(), csv_path.name)
    return report_failures(summary)


if __name__ == "__main__":
    sys.exit(main())
