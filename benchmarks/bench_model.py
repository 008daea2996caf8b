"""AWF speed on this machine: inference latency and training throughput, with a per-part breakdown.

    python -m benchmarks.bench_model                      # full run (a few minutes on 2 CPU cores)
    python -m benchmarks.bench_model --quick              # small sizes, one repeat
    python -m benchmarks.bench_model --neck 96 --decoder 48 24

Reports: forward ms (batch 1) at each ``--infer`` size in fp32 and under bf16 autocast (CPU) /
fp16 (CUDA); training step img/s (forward + loss + backward + SGD step) at each ``--train`` size
with ``--batch``; and forward+backward ms of backbone / neck / head / decoder measured one at a
time on detached inputs. Results are printed and written to ``benchmarks/out/bench_model.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


from models.awf import AWF, AWFConfig
from utils.loss import AWFLoss
from utils.precision import cpu_native_bf16


def native_bf16() -> bool:
    """Whether this CPU runs bf16 natively (utils.precision's check); else autocast emulates it."""
    return cpu_native_bf16()[0]


def timed(fn, repeat: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def synthetic_batch(b: int, size: int, device) -> dict:
    """A batch with ~20 square cells per image (targets, fg, height)."""
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(b, 20, 2, generator=g) * (size - 40)
    wh = 10 + torch.rand(b, 20, 2, generator=g) * 30
    idx = torch.arange(b).repeat_interleave(20).float()[:, None]
    targets = torch.cat([idx, xy.view(-1, 2), (xy + wh).view(-1, 2)], 1)
    fg = (torch.rand(b, size, size, generator=g) > 0.7).float()
    return {"img": torch.rand(b, 3, size, size, generator=g), "targets": targets,
            "fg": fg, "height": fg * 0.8}


def bench_forward(model: AWF, size: int, dtype, device, repeat: int) -> float:
    x = torch.rand(1, 3, size, size, device=device)
    model.eval()

    def run():
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            model(x)
    return timed(run, repeat)


def bench_train(model: AWF, size: int, batch: int, dtype, device, repeat: int) -> float:
    """Training images per second (forward + loss + backward + SGD step)."""
    data = synthetic_batch(batch, size, device)
    data = {k: v.to(device) for k, v in data.items()}
    loss_fn = AWFLoss(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    model.train()

    def step():
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(data["img"])
        loss, _ = loss_fn(out, data)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return batch / (timed(step, repeat) / 1e3)


def bench_resnet18(size: int, batch: int, device, repeat: int) -> float:
    """Reference: torchvision ResNet-18 forward + backward img/s (train mode, fp32), to read the
    AWF figures against when the machine is shared."""
    import torchvision

    net = torchvision.models.resnet18(weights=None).to(device).train()
    x = torch.rand(batch, 3, size, size, device=device)
    return batch / (_fwd_bwd(net, [x], repeat) / 1e3)


def _fwd_bwd(module_fn, inputs, repeat: int) -> float:
    def run():
        outs = module_fn(*inputs)
        outs = outs if isinstance(outs, (list, tuple)) else list(outs.values()) if isinstance(outs, dict) else [outs]
        sum(o.float().mean() for o in outs).backward()
    return timed(run, repeat)


def bench_parts(model: AWF, size: int, batch: int, device, repeat: int) -> dict:
    """Forward+backward ms of each part alone (train mode, fp32) on detached inputs."""
    model.train()
    x = torch.rand(batch, 3, size, size, device=device)
    with torch.no_grad():
        feats = model.backbone((x - model.mean) / model.std)
        p = model.neck(feats[2:])
    leaf = lambda t: t.detach().requires_grad_(True)  # noqa: E731
    feats = [leaf(f) for f in feats]
    p = {s: leaf(v) for s, v in p.items()}
    return {
        "backbone": _fwd_bwd(model.backbone, [x], repeat),
        "neck": _fwd_bwd(lambda *f: model.neck(list(f)), feats[2:], repeat),
        "head": _fwd_bwd(lambda: [conv(p[s]) for conv, s in zip(model.head, model.strides)], [], repeat),
        "decoder": _fwd_bwd(model.decoder, [p[8], feats[1], feats[0]], repeat),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--infer", type=int, nargs="+", default=[512, 1024], help="forward sizes (batch 1)")
    ap.add_argument("--train", type=int, nargs="+", default=[256, 512], help="training-step sizes")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--neck", type=int, default=AWFConfig().neck_channels)
    ap.add_argument("--decoder", type=int, nargs=2, default=AWFConfig().decoder_channels)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--no-half", action="store_true", help="skip the bf16/fp16 autocast runs")
    ap.add_argument("--force-half", action="store_true", help="bf16 at every size even without native bf16")
    ap.add_argument("--quick", action="store_true", help="--infer 256 --train 256 --batch 2 --repeat 1")
    opt = ap.parse_args(argv)
    if opt.quick:
        opt.infer, opt.train, opt.batch, opt.repeat = [256], [256], 2, 1
    if opt.threads:
        torch.set_num_threads(opt.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    half = torch.float16 if device.type == "cuda" else torch.bfloat16
    torch.manual_seed(0)
    model = AWF(AWFConfig(neck_channels=opt.neck, decoder_channels=list(opt.decoder))).to(device)
    res = {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
           "native_bf16": native_bf16(),
           "config": model.config_dict(), "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
           "forward_ms": {}, "train_img_s": {}, "parts_ms": {}}
    dtypes = [("fp32", None)] + ([] if opt.no_half else [(str(half).split(".")[-1], half)])
    slow_bf16 = device.type == "cpu" and not native_bf16()
    if slow_bf16 and not opt.no_half:
        print("this CPU has no native bf16 (oneDNN): bf16 autocast is emulated and very slow; "
              "measured at the smallest --infer size only (--force-half for all)", flush=True)
    for size in opt.infer:
        for name, dt in dtypes:
            if dt is not None and slow_bf16 and size != min(opt.infer) and not opt.force_half:
                continue
            res["forward_ms"][f"{size}/{name}"] = ms = bench_forward(model, size, dt, device, opt.repeat)
            print(f"forward {size}x{size} batch 1 {name}: {ms:.0f} ms", flush=True)
    for size in opt.train:
        res["train_img_s"][f"{size}/b{opt.batch}/fp32"] = ips = bench_train(model, size, opt.batch, None, device,
                                                                           opt.repeat)
        print(f"train step {size}x{size} batch {opt.batch} fp32: {ips:.2f} img/s", flush=True)
        ref = res.setdefault("resnet18_img_s", {})[f"{size}/b{opt.batch}"] = bench_resnet18(
            size, opt.batch, device, opt.repeat)
        print(f"  reference torchvision resnet18 fwd+bwd {size}x{size} batch {opt.batch}: {ref:.2f} img/s "
              f"(an AWF training step costs {ref / ips:.2f}x a ResNet-18 fwd+bwd)", flush=True)
        parts = res["parts_ms"][f"{size}/b{opt.batch}"] = bench_parts(model, size, opt.batch, device, opt.repeat)
        total = sum(parts.values())
        print("  fwd+bwd ms: " + ", ".join(f"{k} {v:.0f} ({100 * v / total:.0f}%)" for k, v in parts.items()),
              flush=True)
    out = Path(__file__).resolve().parent / "out" / "bench_model.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
