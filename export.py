"""Export an AWF checkpoint to ONNX (boxes decoded before NMS, foreground probability, height map).

    python export.py --weights ckpts/general.pt --img 640 --include onnx
    python export.py --weights best.pt --img 640 --no-dynamic          # fixed 640x640 input
    python export.py --weights best.pt --half --device 0               # fp16 (CUDA only)
    python export.py --weights best.pt --verify                        # + onnxruntime parity check

Writes WEIGHTS.onnx beside the checkpoint (or --output). The graph's input is ``images`` float
(B, 3, H, W) RGB in [0, 1], H and W multiples of 32; see utils/export.py for the outputs.
"""
import argparse
import logging
import sys
from pathlib import Path

from models.loading import load_model
from utils.checkpoint import CheckpointError
from utils.cli import setup
from utils.dist import select_device
from utils.export import DEFAULT_OPSET, check_onnx, compare_with_torch, export_onnx

LOGGER = logging.getLogger("export")
# onnxruntime-vs-PyTorch tolerance of --verify (max error relative to each output's largest value)
VERIFY_RTOL = 1e-4


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", required=True, help="AWF checkpoint of this project (.pt)")
    p.add_argument("--img", "--img-size", type=int, nargs="+", default=[640],
                   help="example input size: H [W] in pixels, multiples of 32")
    p.add_argument("--include", nargs="+", default=["onnx"], choices=["onnx"], help="formats")
    p.add_argument("--dynamic", action=argparse.BooleanOptionalAction, default=True,
                   help="dynamic batch, height and width")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version")
    p.add_argument("--half", action="store_true", help="fp16 export (needs --device on CUDA)")
    p.add_argument("--device", default="cpu", help="cpu or a cuda device, e.g. 0")
    p.add_argument("--output", default=None, help="ONNX file (default: WEIGHTS with .onnx)")
    p.add_argument("--verify", action="store_true",
                   help="compare onnxruntime (CPU) with PyTorch on a random input")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup()
    if len(args.img) not in (1, 2):
        LOGGER.error("--img takes one or two sizes, got %s", args.img)
        return 2
    if args.verify and args.half:
        LOGGER.error("--verify compares fp32 outputs; export without --half to verify")
        return 2
    img_size = (args.img[0], args.img[-1])
    out = Path(args.output) if args.output else Path(args.weights).with_suffix(".onnx")
    try:
        model = load_model(args.weights, kind="awf")
        device = select_device(args.device)
        export_onnx(model, out, img_size, args.opset, args.dynamic, args.half, device)
        check_onnx(out)
    except (CheckpointError, ValueError, OSError) as exc:
        LOGGER.error("%s", " ".join(str(exc).split())[:300])
        return 1
    if args.verify:
        errors = compare_with_torch(model, out, img_size)
        LOGGER.info("onnxruntime vs PyTorch, max relative error: %s",
                    ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
        if max(errors.values()) > VERIFY_RTOL:
            LOGGER.error("parity check failed (tolerance %.0e)", VERIFY_RTOL)
            return 1
    size_mb = out.stat().st_size / 2**20
    print(f"ONNX export success: {out.resolve()} ({size_mb:.1f} MB); checked with onnx.checker")
    return 0


if __name__ == "__main__":
    sys.exit(main())
