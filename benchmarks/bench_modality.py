"""Timing of utils.modality.classify_modality on 1024x1024 images (median of repeated calls).

Run: python -m benchmarks.bench_modality [--repeats 200]
"""
from __future__ import annotations

import argparse
import time

import numpy as np


from utils.modality import classify_modality
from utils.synthetic import make_sample


def median_ms(img: np.ndarray, repeats: int) -> float:
    classify_modality(img)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        classify_modality(img)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args(argv)
    cases = {
        "fl 1ch uint8": make_sample("fl", (1024, 1024), seed=0, size_range=(15, 60))[0],
        "fl 3ch uint8": make_sample("fl", (1024, 1024), seed=0, size_range=(15, 60), channels=3)[0],
        "bf RGB uint8": make_sample("bf", (1024, 1024), seed=0, size_range=(15, 60))[0],
        "gs 1ch uint16": make_sample("gs", (1024, 1024), seed=0, size_range=(15, 60),
                                     dtype="uint16")[0],
        "gs RGBA uint8": np.repeat(make_sample("gs", (1024, 1024), seed=0)[0][..., None], 4, 2),
        "float32 3ch": make_sample("bf", (1024, 1024), seed=0)[0].astype(np.float32) / 255,
    }
    print(f"classify_modality, 1024x1024, median of {args.repeats} calls")
    for name, img in cases.items():
        print(f"  {name:<14} {median_ms(img, args.repeats):6.2f} ms  -> {classify_modality(img)}")


if __name__ == "__main__":
    main()
