"""Training throughput of the AWF (images per second): fp32 against ``--amp auto``, side by side.

    python -m benchmarks.bench_train                       # 256 and 512: fp32 vs auto (1 process)
    python -m benchmarks.bench_train --img 256 --steps 10  # one size
    python -m benchmarks.bench_train --ddp                 # + two Gloo ranks (fp32 and auto)

The auto choice is utils.precision's (bf16 autocast + channels_last on a CPU with native bf16,
fp32 + channels_last on any other CPU, fp16 on CUDA). The baseline, ``fp32-nchw``, is fp32 in
PyTorch's default memory layout; ``fp32`` is the policy of ``--amp fp32`` (channels_last on a
CPU). All policies run in one process on the same batches, in alternating rounds, so that a
change of machine load hits them alike.

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

from models.awf import AWF, AWFConfig
from utils.config import Hyp, load_config, load_data_config
from utils.dataset import CellDataset, collate_fn
from utils.datasplits import resolve_split
from utils.engine import build_optimizer
from utils.label_cache import DatasetCache
from utils.loss import AWFLoss
from utils.precision import NCHW_FP32, Precision, benchmark_policy, resolve_precision

REPO = Path(__file__).resolve().parents[1]


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


class Stepper:
    """One AWF + optimizer under one precision policy; ``step(batch)`` -> seconds."""

    def __init__(self, precision: Precision, hyp, ddp: bool):
        torch.manual_seed(0)
        self.precision = precision
        model = precision.model(AWF(AWFConfig()))
        self.loss_fn = AWFLoss(model, hyp.loss)
        self.net = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
        self.opt = build_optimizer(model, hyp)

    def step(self, b: dict) -> float:
        t0 = time.perf_counter()
        with self.precision.autocast():
            out = self.net(self.precision.input(b["img"]))
        loss, _ = self.loss_fn(out, b)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0


def time_policies(img: int, batch: int, steps: int, modes: list[str], ddp: bool) -> dict[str, float]:
    """img/s per ``--amp`` mode (summed over ranks under DDP): 2 warm-up steps each, then
    ``steps`` rounds in which every mode runs one step on the same batch; median per mode."""
    rank = int(os.environ.get("RANK", 0))
    if ddp:
        torch.distributed.init_process_group("gloo")
    data, hyp = batches(img, batch, steps + 2, rank)
    steppers = {m: Stepper(benchmark_policy(m), hyp, ddp) for m in modes}
    times: dict[str, list[float]] = {m: [] for m in modes}
    for b in data:
        for m, s in steppers.items():
            times[m].append(s.step(b))
    out = {}
    for m in modes:
        ips = torch.tensor(batch / statistics.median(times[m][2:]))
        if ddp:
            torch.distributed.all_reduce(ips)
        out[m] = float(ips)
    if ddp:
        torch.distributed.destroy_process_group()
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--img", type=int, nargs="+", default=[256, 512])
    p.add_argument("--batch", type=int, default=8, help="total batch (split over ranks)")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--ddp", action="store_true", help="also time two Gloo ranks")
    p.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    auto = resolve_precision("auto", "cpu")
    modes = [NCHW_FP32, "fp32"] if auto.mode == "fp32" else [NCHW_FP32, "fp32", "auto"]
    if args.ddp_worker:
        ips = time_policies(args.img[0], args.batch // 2, args.steps, modes, ddp=True)
        if int(os.environ.get("RANK", 0)) == 0:
            print("RESULT " + " ".join(f"{m}={v:.3f}" for m, v in ips.items()))
        return
    if not (REPO.parent / "shared" / "data" / "dsb2018").is_dir():
        sys.exit("needs ../shared/data (the real data of data/real.yaml)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}; "
          f"auto = {auto.describe()}")
    for img in args.img:
        single = time_policies(img, args.batch, args.steps, modes, ddp=False)
        base = single[NCHW_FP32]
        line = f"img {img}: 1 process " + ", ".join(
            f"{m} {v:.2f} img/s ({v / base:.2f}x)" for m, v in single.items())
        if args.ddp:
            two = ddp_run(img, args)
            line += "; 2 Gloo ranks " + ", ".join(f"{m} {v:.2f} img/s" for m, v in two.items())
        print(line, flush=True)


def ddp_run(img: int, args) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, torch.get_num_threads() // 2))}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "-m", "benchmarks.bench_train", "--ddp-worker", "--img", str(img),
                          "--batch", str(args.batch), "--steps", str(args.steps)],
                         env=env, capture_output=True, text=True, cwd=REPO)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")]
    if not lines:
        return {"failed": float("nan")}
    return {k: float(v) for k, v in (kv.split("=") for kv in lines[-1].split()[1:])}


if __name__ == "__main__":
    main()
