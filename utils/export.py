"""Export of the AWF network to ONNX (export.py is the command line).

The exported graph is :class:`models.awf.AWFExport`: input ``images`` float ``(B, 3, H, W)`` RGB
in [0, 1] (H, W multiples of 32; ImageNet normalisation is inside the graph), outputs

- ``boxes``  ``(B, N, 5)`` float32 [cx, cy, w, h, score], pixels (decoded, before NMS; N =
  sum over levels of anchors * (H / stride) * (W / stride)),
- ``fg``     ``(B, 1, H, W)`` float32 foreground probability 0..1,
- ``height`` ``(B, 1, H, W)`` float32 height map (see docs/ARCHITECTURE.md).

With ``dynamic=True`` batch, height and width are dynamic axes. NMS and the watershed stay
outside the graph (utils/nms.py, utils/watershed.py), as in the PyTorch pipeline. The exporter is
torch.onnx's TorchScript-based one (``dynamo=False``: no onnxscript dependency).
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from models.awf import AWF, MAX_STRIDE, AWFExport
from utils.io import atomic_write

LOGGER = logging.getLogger(__name__)

# ONNX opset of the export: 17 is read by onnxruntime >= 1.14, TensorRT >= 8.6 and OpenVINO 2023
DEFAULT_OPSET = 17
INPUT_NAMES = ["images"]
OUTPUT_NAMES = ["boxes", "fg", "height"]
# Dynamic axes (name -> {axis: symbolic name}); N of ``boxes`` follows H and W.
DYNAMIC_AXES = {"images": {0: "batch", 2: "height", 3: "width"},
                "boxes": {0: "batch", 1: "anchors"},
                "fg": {0: "batch", 2: "height", 3: "width"},
                "height": {0: "batch", 2: "height", 3: "width"}}


def export_input(img_size: tuple[int, int], batch: int = 1, device="cpu",
                 dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    """A random example input ``(batch, 3, H, W)`` in [0, 1]; H, W must be multiples of 32."""
    h, w = img_size
    if h % MAX_STRIDE or w % MAX_STRIDE or h <= 0 or w <= 0:
        raise ValueError(f"--img {h} {w}: height and width must be positive multiples of {MAX_STRIDE}")
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, h, w, generator=g).to(device=device, dtype=dtype)


def export_onnx(model: AWF, path, img_size: tuple[int, int] = (640, 640), opset: int = DEFAULT_OPSET,
                dynamic: bool = True, half: bool = False, device="cpu") -> Path:
    """Export ``model`` (an :class:`AWF`, put in eval mode) to ``path`` (written atomically).

    ``img_size`` (H, W) pixels is the example input's size (the only size when ``dynamic`` is
    False); ``half`` exports fp16 weights and input (CUDA only, as in YOLOv5).
    """
    device = torch.device(device)
    if half and device.type != "cuda":
        raise ValueError("--half needs a CUDA device (fp16 convolutions are a GPU format)")
    dtype = torch.float16 if half else torch.float32
    model = model.eval().to(device=device, dtype=dtype)
    wrapper = AWFExport(model).eval()
    x = export_input(img_size, device=device, dtype=dtype)
    with torch.no_grad():
        wrapper(x)  # a dry run: shape errors surface here, not inside the exporter
    path = Path(path)
    with atomic_write(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        # the TorchScript exporter is chosen on purpose (the dynamo one needs onnxscript)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        torch.onnx.export(wrapper, (x,), str(tmp), opset_version=opset, input_names=INPUT_NAMES,
                          output_names=OUTPUT_NAMES, dynamic_axes=DYNAMIC_AXES if dynamic else None,
                          do_constant_folding=True, dynamo=False)
    LOGGER.info("exported %s (opset %d, %s, %s)", path, opset, "dynamic batch/H/W" if dynamic
                else f"fixed {img_size[0]}x{img_size[1]}", "fp16" if half else "fp32")
    return path


def check_onnx(path) -> None:
    """``onnx.checker`` (with shape inference) on the file; an invalid model raises ValueError."""
    import onnx
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ValueError(f"{path}: onnx.checker: {exc}") from None


def run_onnx(path, x: np.ndarray, providers: list[str] | None = None) -> list[np.ndarray]:
    """Run the exported graph with onnxruntime (CPU by default): ``x (B, 3, H, W)`` -> [boxes, fg, height]."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])
    return sess.run(OUTPUT_NAMES, {INPUT_NAMES[0]: x})


def max_relative_error(ref: np.ndarray, got: np.ndarray) -> float:
    """``max |ref - got| / max(max |ref|, 1)``: one number per output, robust to near-zero values."""
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    if ref.shape != got.shape:
        raise ValueError(f"shape mismatch: {ref.shape} vs {got.shape}")
    return float(np.abs(ref - got).max(initial=0.0) / max(np.abs(ref).max(initial=0.0), 1.0))


@torch.no_grad()
def compare_with_torch(model: AWF, path, img_size: tuple[int, int], seed: int = 1) -> dict[str, float]:
    """Max relative error per output between PyTorch (CPU, fp32) and onnxruntime on one random input."""
    wrapper = AWFExport(model.float().cpu().eval()).eval()
    x = export_input(img_size, seed=seed)
    ref = [t.numpy() for t in wrapper(x)]
    got = run_onnx(path, x.numpy())
    return {name: max_relative_error(r, g) for name, r, g in zip(OUTPUT_NAMES, ref, got)}
