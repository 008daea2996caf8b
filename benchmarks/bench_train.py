"""Training throughput of the AWF (images per second), one process vs two Gloo ranks.

    python -m benchmarks.bench_train                       # 256 and 512, 1 process and 2 ranks
    python -m benchmarks.bench_train --img 256 --steps 10  # one size

Batches come from the real data of data/real.yaml (../shared/data) through the training
dataset (augmentation included, images cached in RAM), so the figure is what train_main.py
sees per optimizer step, data loading excluded. Each figure is the median over ``--steps``
timed steps after 2 warm-up steps.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

from models.awf import AWF, AWFConfig
from utils.config import Hyp, load_config, load_data_config
from utils.dataset import CellDataset, DatasetCache, collate_fn, resolve_split
from utils.engine import build_optimizer
from utils.loss import AWFLoss


def batches(img: int, batch: int, n: int, rank: int):
    cfg = load_data_config(REPO / "data" / "real.yaml")
    samples = resolve_split(cfg, "train")[: max(64, batch * n)]
    hyp = load_config(Hyp, REPO / "data" / "hyps" / "hyp.labeled.yaml")
    ds = CellDataset(samples, img, hyp, augment=True, cache=DatasetCache(samples, REPO / "runs" / "cache"))
    out = []
    for k in range(n):
        items = [ds[(rank * 7919 + k * batch + j) % len(ds)] for j in range(batch)]
        b = collate_fn(items)
        b["img"] = b["img"].float() / 255.0
        out.append(b)
    return out, hyp


def time_steps(img: int, batch: int, steps: int, ddp: bool) -> float:
    rank = int(os.environ.get("RANK", 0))
    if ddp:
        torch.distributed.init_process_group("gloo")
    model = AWF(AWFConfig())
    data, hyp = batches(img, batch, steps + 2, rank)
    loss_fn = AWFLoss(model, hyp.loss)
    net = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
    opt = build_optimizer(model, hyp)
    times = []
    for b in data:
        t0 = time.perf_counter()
        loss, _ = loss_fn(net(b["img"]), b)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    ips = batch / statistics.median(times[2:])
    if ddp:
        total = torch.tensor(ips)
        torch.distributed.all_reduce(total)
        ips = float(total)
        torch.distributed.destroy_process_group()
    return ips


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--img", type=int, nargs="+", default=[256, 512])
    p.add_argument("--batch", type=int, default=8, help="total batch (split over ranks)")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.ddp_worker:
        ips = time_steps(args.img[0], args.batch // 2, args.steps, ddp=True)
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"RESULT {ips:.3f}")
        return
    if not (REPO.parent / "shared" / "data" / "dsb2018").is_dir():
        sys.exit("needs ../shared/data (the real data of data/real.yaml)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, fp32")
    for img in args.img:
        single = time_steps(img, args.batch, args.steps, ddp=False)
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, torch.get_num_threads() // 2))}
        out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                              "-m", "benchmarks.bench_train", "--ddp-worker", "--img", str(img), "--batch", str(args.batch),
                              "--steps", str(args.steps)], env=env, capture_output=True, text=True, cwd=REPO)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")]
        two = float(lines[-1].split()[1]) if lines else float("nan")
        print(f"img {img}: 1 process {single:.2f} img/s, 2 Gloo ranks {two:.2f} img/s "
              f"(ratio {two / single:.2f})")


if __name__ == "__main__":
    main()
