"""The fixed train/validation splits of the real data of data/cells.yaml (data/splits/*.txt).

    python -m utils.real_splits --root ../shared/data --out data/splits  # rewrites ctc_*, monuseg_*

- ctc (Cell Tracking Challenge time-lapse frames): consecutive frames are near-duplicates, so
  each sequence is split in time blocks: the last ``VAL_FRACTION`` of its frames validate, and the
  ``guard`` frames just before that block are left out of both sides (no training frame is a
  neighbour of a validation frame).
- monuseg: one held-out tile from each of three organs (``MONUSEG_VAL``); the organs also occur in
  training, as they will at prediction time.
- dsb2018 and usiigaci keep data/splits/real_{train,val}.txt (data/real.yaml), made before.

A split file lists image paths relative to the data root, one per line (utils.datasplits).
"""
from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

VAL_FRACTION = 0.2
# frames left out between a sequence's training and validation blocks (CTC file prefix -> count):
# DIC frames are consecutive (t000..t083), PSC every 2nd frame, Fluo every 3rd, so fewer frames
# span the same time
CTC_GUARD = {"ctc_dic_": 3, "ctc_psc_": 2, "ctc_fluo_": 1}
# MoNuSeg 2018 training tiles held out: breast (TCGA-AR), kidney (TCGA-B0), prostate (TCGA-G9)
MONUSEG_VAL = ("monuseg_TCGA-AR-A1AS", "monuseg_TCGA-B0-5710", "monuseg_TCGA-G9-6362")
_FRAME = re.compile(r"_t(\d+)$")


def block_split(names: list[str], val_fraction: float = VAL_FRACTION,
                guard: int = 0) -> tuple[list[str], list[str]]:
    """(train, val) of one time-lapse sequence: ``names`` end in ``_tNNN``; val is the last
    ``ceil(val_fraction * n)`` frames in time, and the ``guard`` frames before it are dropped."""
    frames = sorted(names, key=lambda n: int(_FRAME.search(n).group(1)))
    n_val = max(1, math.ceil(val_fraction * len(frames)))
    if n_val + guard >= len(frames):
        raise ValueError(f"{len(frames)} frames: too few for {n_val} validation + {guard} guard frames")
    return frames[: len(frames) - n_val - guard], frames[len(frames) - n_val:]


def ctc_split(names: list[str]) -> tuple[list[str], list[str]]:
    """(train, val) over every CTC sequence in ``names`` (grouped by the CTC_GUARD prefixes)."""
    train, val = [], []
    for prefix, guard in CTC_GUARD.items():
        seq = [n for n in names if n.startswith(prefix)]
        if seq:
            t, v = block_split(seq, VAL_FRACTION, guard)
            train += t
            val += v
    return train, val


def monuseg_split(names: list[str]) -> tuple[list[str], list[str]]:
    missing = sorted(set(MONUSEG_VAL) - set(names))
    if missing:
        raise ValueError(f"monuseg: validation tiles not found: {', '.join(missing)}")
    return [n for n in sorted(names) if n not in MONUSEG_VAL], sorted(MONUSEG_VAL)


SPLITTERS = {"ctc": ctc_split, "monuseg": monuseg_split}


def write_splits(root: Path, out: Path) -> dict[str, tuple[int, int]]:
    """Write OUT/{source}_{train,val}.txt for each folder of SPLITTERS under ``root``."""
    counts = {}
    for folder, split in SPLITTERS.items():
        images = {p.stem: p for p in sorted((root / folder / "images").iterdir()) if p.is_file()}
        train, val = split(list(images))
        for side, names in (("train", train), ("val", val)):
            lines = [images[n].relative_to(root).as_posix() for n in names]
            (out / f"{folder}_{side}.txt").write_text("\n".join(lines) + "\n")
        counts[folder] = (len(train), len(val))
    return counts


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--root", default="../shared/data", help="the real data (NeurIPS layout folders)")
    p.add_argument("--out", default="data/splits", help="folder of the split files")
    args = p.parse_args(argv)
    for folder, (n_train, n_val) in write_splits(Path(args.root), Path(args.out)).items():
        print(f"{folder}: {n_train} train, {n_val} val -> {args.out}/{folder}_{{train,val}}.txt")


if __name__ == "__main__":
    main()
