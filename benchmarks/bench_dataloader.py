"""Training data loader throughput (images/s) of CellDataset with augmentation.

    python -m benchmarks.bench_dataloader        # dsb2018 if present, else synthetic
    python -m benchmarks.bench_dataloader --data synthetic --sizes 256 512 --workers 0 2

Measures whole batches through the DataLoader (mosaic, affine, flips, intensity jitter, boxes,
fg + height targets, collate), after one warm-up batch (worker start-up is not counted).
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path


from utils.config import DataConfig, Hyp
from utils.dataset import CellDataset, build_dataloader
from utils.datasplits import resolve_split
from utils.label_cache import DatasetCache

LOGGER = logging.getLogger("bench_dataloader")

DSB2018 = Path("/work/shared/data/dsb2018")
# Synthetic fallback: images of this size (pixels), about the median dsb2018 image.
SYNTH_SHAPE = (320, 320)
SYNTH_IMAGES = 48


def dataset_root(data: str, tmp: Path) -> Path:
    if data == "synthetic" or (data == "auto" and not DSB2018.is_dir()):
        from utils.synthetic import write_dataset
        return write_dataset(tmp / "synthetic", SYNTH_IMAGES, size=SYNTH_SHAPE, seed=0)
    return DSB2018 if data == "auto" else Path(data)


def throughput(ds: CellDataset, batch: int, workers: int, batches: int) -> float:
    """Images per second over ``batches`` batches after one warm-up batch."""
    loader, _ = build_dataloader(ds, batch, workers, shuffle=True, seed=0)
    it = iter(loader)
    next(it)
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            n += len(next(it)["img"])
        except StopIteration:
            break
    return n / (time.perf_counter() - t0)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="auto", help="'auto', 'synthetic' or a NeurIPS-layout folder")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=10, help="timed batches per setting")
    ap.add_argument("--cache-images", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        root = dataset_root(args.data, Path(tmp))
        samples = resolve_split(DataConfig(path=str(root), train=["."]), "train")
        t0 = time.perf_counter()
        cache = DatasetCache(samples, Path(tmp) / "cache", cache_images=args.cache_images)
        LOGGER.info("data %s: %d images; cache built in %.1f s", root, len(samples),
                    time.perf_counter() - t0)
        t0 = time.perf_counter()
        DatasetCache(samples, Path(tmp) / "cache")
        LOGGER.info("cache reloaded in %.3f s", time.perf_counter() - t0)
        LOGGER.info("%6s %8s %10s", "img", "workers", "images/s")
        for size in args.sizes:
            ds = CellDataset(samples, size, Hyp(), augment=True, cache=cache)
            for workers in args.workers:
                rate = throughput(ds, args.batch, workers, args.batches)
                LOGGER.info("%6d %8d %10.1f", size, workers, rate)


if __name__ == "__main__":
    main()
