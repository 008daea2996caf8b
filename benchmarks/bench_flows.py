"""Benchmark utils/flows.py: target and reconstruction time against image size and cell count, and
(``--accuracy``) ground-truth round-trip F1 of the reconstruction variants behind its design.

    python -m benchmarks.bench_flows                      # timing table (median of --repeats runs)
    python -m benchmarks.bench_flows --accuracy           # variant table (synthetic + dsb2018)

Timing rows use synthetic labels (utils.synthetic.make_label, cells 10-60 px, touching) at sizes
256..2048 with a sparse and a dense cell count; times are in milliseconds. Torch runs with
``--threads`` threads (1 by default: on a busy 2-core machine torch's thread pool costs more than
it gains on these tensor sizes).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch


from utils import flows
from utils.io import read_label
from utils.metrics import match_instances
from utils.synthetic import SHAPES, make_label

DSB_LABELS = Path(__file__).resolve().parents[2] / "shared/data/dsb2018/labels"
SIZES = (256, 512, 1024, 2048)
CELLS_PER_256 = (8, 32)  # requested cells per 256x256 area: sparse, dense (~500 at 1024 dense)
# Reconstruction variants compared by --accuracy (keyword arguments of reconstruct_masks).
VARIANTS = {
    "omnipose-like: 1/(1+t) steps, 4-conn": {"min_climb": None, "step_decay": 1.0,
                                             "connectivity": 1, "merge_rounds": 0},
    "omnipose-like, 8-conn": {"min_climb": None, "step_decay": 1.0, "merge_rounds": 0},
    "stop on skeleton, 8-conn, no merge": {"merge_rounds": 0},
    "default (fim)": {},
    "default, merge all touching pairs": {"merge_max_score": 9.0},
    "default with edt targets": {"method": "edt"},
}


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def timing_table(repeats: int, device: str) -> None:
    print(f"| size | cells | fg px | targets fim ms | targets edt ms | reconstruct ms ({device}) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for size in SIZES:
        for per in CELLS_PER_256:
            label = make_label((size, size), n_cells=per * (size // 256) ** 2, seed=0)
            target = flows.label_to_tensor(label).numpy()
            t_fim = _median_ms(lambda lab=label: flows.omnipose_targets(lab, "fim"), repeats)
            t_edt = _median_ms(lambda lab=label: flows.omnipose_targets(lab, "edt"), repeats)
            t_rec = _median_ms(lambda t=target: flows.reconstruct_masks(t[:2], t[2], device=device),
                               repeats)
            print(f"| {size} | {label.max()} | {int((label > 0).sum())} | {t_fim:.0f} | {t_edt:.0f} "
                  f"| {t_rec:.0f} |", flush=True)


def _f1(gt, pred) -> float:
    return match_instances(gt, pred, 0.5, count_bd_cells=True).f1


def accuracy_table(dsb_stride: int) -> None:
    synthetic = [make_label((256, 256), seed=seed, shapes=(shape,)) for seed in range(3)
                 for shape in SHAPES]  # 256x256, cells 10-60 px, half of them touching
    synthetic += [make_label((256, 256), seed=10 + seed, size_range=(6, 40)) for seed in range(3)]
    sets = {"synthetic": synthetic}
    if DSB_LABELS.is_dir():
        sets["dsb2018"] = [read_label(p) for p in sorted(DSB_LABELS.glob("*.tiff"))[::dsb_stride]]
    print("| variant | " + " | ".join(f"{k} F1 ({len(v)} images)" for k, v in sets.items()) + " |")
    print("|---|" + "---:|" * len(sets))
    targets = {m: {k: [flows.label_to_tensor(lab, m).numpy() for lab in v] for k, v in sets.items()}
               for m in ("fim", "edt")}
    for name, kwargs in VARIANTS.items():
        method = kwargs.get("method", "fim")
        row = []
        for key, labels in sets.items():
            f1 = [_f1(lab, flows.reconstruct_masks(t[:2], t[2], **kwargs))
                  for lab, t in zip(labels, targets[method][key])]
            row.append(f"{np.mean(f1):.4f} (min {np.min(f1):.3f})")
        print(f"| {name} | " + " | ".join(row) + " |", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--accuracy", action="store_true", help="variant F1 table instead of timing")
    parser.add_argument("--dsb-stride", type=int, default=4, help="every k-th dsb2018 label")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.accuracy:
        accuracy_table(args.dsb_stride)
    else:
        timing_table(args.repeats, args.device)


if __name__ == "__main__":
    main()
