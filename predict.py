"""Segment every image of a folder: INPUT/NAME.ext -> OUTPUT/NAME_label.tiff.

    python predict.py -i inputs -o outputs                      # branches from data/routing.yaml
    python predict.py -i inputs -o outputs --ckpt best.pt       # one checkpoint for all images
    python predict.py -i unlabeled/images -o unlabeled/labels --ckpt multiscale.pt --pseudo
    python predict.py -i data/semi_labeled.yaml -o runs/pseudo/semi --ckpt best.pt --pseudo

Input: a folder of images, or a dataset YAML whose ``unlabeled`` split is segmented.
--pseudo (pseudo labels for train_weakly.py) also writes OUTPUT/NAME_ignore.png (uncertain
background, left out of the loss) and OUTPUT/confidence.csv (name, image, confidence, ...), which
a dataset YAML names as a ``pseudo`` entry: the dataset folder when OUTPUT is its labels/ folder,
else the path of OUTPUT/confidence.csv (see utils.dataset.resolve_split).
    torchrun --nproc_per_node 2 predict.py -i inputs -o outputs --device 0,1   # input sharded
"""
import argparse
import logging
import sys
from pathlib import Path

from utils.cli import add_prediction_args, router_from_args, setup_logging
from utils.dist import dist_info, select_device
from utils.io import InputError, atomic_write, list_images
from utils.runner import predict_files, records_frame, report_failures, shard

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
    return p.parse_args(argv)


def input_files(source: str) -> list[Path]:
    """Images of ``-i``: a folder's images, or the ``unlabeled`` split of a dataset YAML."""
    if Path(source).suffix.lower() in (".yaml", ".yml"):
        from utils.config import ConfigError, load_data_config
        from utils.dataset import resolve_split
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
        files = shard(input_files(args.input), info.rank, info.world_size)
    except InputError as exc:
        LOGGER.error("%s", exc)
        return 2
    try:
        router = router_from_args(args, device)
    except FileNotFoundError as exc:
        LOGGER.error("%s", exc)
        return 2
    summary, _ = predict_files(files, router, args.output, save_overlay=args.save_overlay,
                               progress=info.is_main, pseudo=args.pseudo,
                               save_rois=args.save_rois, save_geojson=args.save_geojson)
    if summary.records:
        frame = records_frame(summary.records)
        suffix = f"_rank{info.rank}" if info.distributed else ""
        name = ("confidence" if args.pseudo else "predictions") + suffix + ".csv"
        with atomic_write(Path(args.output) / name) as tmp:
            frame.to_csv(tmp, index=False)
    LOGGER.info("%d image(s) segmented; labels%s in %s", len(summary.records),
                " and overlays" if args.save_overlay else "", Path(args.output).resolve())
    return report_failures(summary)


if __name__ == "__main__":
    sys.exit(main())
