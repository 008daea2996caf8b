"""One precision policy for training and inference (``--amp auto|fp32|bf16|fp16``; off = fp32).

``auto`` follows the hardware:

- CUDA: fp16 autocast (YOLOv5's AMP; the engine adds a GradScaler).
- a CPU that runs bf16 natively (AVX-512 BF16 or AMX tiles): bf16 autocast plus channels_last.
  Measured on an AMD EPYC with avx512_bf16 (one AWF training step, --img 256, batch 8, 2 threads):
  fp32 5.4 img/s, bf16 12.3 img/s, bf16 + channels_last 14.7 img/s.
- any other CPU: fp32 plus channels_last. On an AVX2-only EPYC bf16 autocast was 10-77x *slower*
  than fp32: oneDNN emulates bf16 there. channels_last alone (2026-12-07, the same kind of EPYC,
  2 threads; benchmarks.bench_train and bench_predict, ``fp32-nchw`` against ``fp32``): an AWF
  training step at --img 256, batch 8, 5.65 -> 6.07 img/s; a 1024x1024 AWF forward pass 1064 ->
  857 ms; an Omnipose one 1.04 -> 0.77 s (timed ad hoc, outputs equal to 1e-7).

Every CPU policy is channels_last (:data:`CPU_CHANNELS_LAST`); CUDA keeps the default layout.

Detection uses the CPU's capability flags as PyTorch's own cpuinfo reads them
(``torch.cpu._is_avx512_bf16_supported`` / ``_is_amx_tile_supported``), falling back to the
kernel's ``/proc/cpuinfo`` flags. Flags, not a timed probe: they cost nothing, give the same
answer every run (a probe on a shared 2-core machine is noisy, and a wrong answer is a 10x
slowdown or a 2.7x loss), and they are exactly the instructions oneDNN's bf16 kernels need.

Whatever the mode, parameters, EMA, optimizer state and checkpoints stay fp32 (autocast casts
per operation), and the losses run in fp32 (utils/loss.py casts the outputs).
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

LOGGER = logging.getLogger(__name__)

# The values of every --amp flag (training, predict.py, evaluate.py, tools): "off" is an alias of
# fp32 (the engine's former name for full precision), accepted everywhere.
MODES = ("auto", "fp32", "bf16", "fp16", "off")
_ALIASES = {"off": "fp32"}
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_CPUINFO_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# The --amp help of every command line.
AMP_HELP = ("precision (utils.precision): auto = fp16 on CUDA, bf16 on a CPU with native bf16, "
            "else fp32 (channels_last on every CPU); off = fp32")
# The memory format of every CPU policy: faster in fp32 and in bf16 (figures in the module
# docstring); fp16 on a CPU, discouraged anyway, follows them unmeasured.
CPU_CHANNELS_LAST = True


@dataclass(frozen=True)
class Precision:
    """An autocast dtype (None = fp32) and a memory format, with the reason they were chosen."""

    mode: str                  # fp32 | bf16 | fp16 (resolved, never "auto")
    device_type: str           # "cpu" | "cuda"
    channels_last: bool = False
    reason: str = ""

    @property
    def dtype(self) -> torch.dtype | None:
        return _DTYPES[self.mode]

    def autocast(self):
        """Context manager: autocast to ``dtype`` on the device (a no-op in fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def model(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` in this policy's memory format (parameters stay fp32)."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, C, H, W)`` in this policy's memory format."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def describe(self) -> str:
        layout = " + channels_last" if self.channels_last else ""
        return f"{self.mode}{layout} on {self.device_type} ({self.reason})"


def _read_flags(path) -> set[str]:
    """The ``flags`` line of a Linux cpuinfo file as a set (empty when unreadable)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpuinfo_flags() -> set[str]:
    return _read_flags("/proc/cpuinfo")


def cpu_native_bf16() -> tuple[bool, str]:
    """(whether this CPU runs bf16 natively, the evidence in words)."""
    probes = [("avx512_bf16", "_is_avx512_bf16_supported"), ("amx_bf16", "_is_amx_tile_supported")]
    if not torch.backends.mkldnn.is_available():
        return False, "this PyTorch build has no oneDNN"
    for flag, fn in probes:
        check = getattr(torch.cpu, fn, None)
        if check is not None and check():
            return True, f"CPU reports {flag}"
    flags = _cpuinfo_flags()
    for flag in _CPUINFO_BF16_FLAGS:
        if flag in flags:
            return True, f"/proc/cpuinfo lists {flag}"
    return False, "CPU has neither avx512_bf16 nor amx_bf16 (bf16 would be emulated, many times slower)"


def resolve_precision(mode: str, device: torch.device | str,
                      native_bf16=cpu_native_bf16) -> Precision:
    """The policy for ``--amp mode`` on ``device``; ``native_bf16()`` -> (bool, reason) is the CPU
    check (a parameter so that tests can stub either answer)."""
    mode = _ALIASES.get(mode, mode)
    if mode not in MODES:
        raise ValueError(f"--amp {mode!r}: choose one of {', '.join(MODES)}")
    dev = torch.device(device).type
    nhwc = dev == "cpu" and CPU_CHANNELS_LAST
    if mode == "auto":
        if dev == "cuda":
            return Precision("fp16", dev, reason="auto: CUDA")
        ok, why = native_bf16()
        if ok:
            return Precision("bf16", dev, channels_last=nhwc, reason=f"auto: {why}")
        return Precision("fp32", dev, channels_last=nhwc, reason=f"auto: {why}")
    if mode == "fp32":
        return Precision("fp32", dev, channels_last=nhwc, reason="forced by --amp fp32")
    if mode == "fp16" and dev == "cpu":
        LOGGER.warning("--amp fp16 on CPU: autocast fp16 is slow on most processors; bf16 or fp32 "
                       "is usually the better choice")
    return Precision(mode, dev, channels_last=nhwc, reason=f"forced by --amp {mode}")


# The benchmarks' baseline beside the --amp modes: fp32 in PyTorch's default (NCHW) layout.
NCHW_FP32 = "fp32-nchw"


def benchmark_policy(mode: str, device: torch.device | str = "cpu") -> Precision:
    """``--amp mode``'s policy on ``device``, or, for :data:`NCHW_FP32`, fp32 without
    channels_last (what the CPU policies gain by the layout, measured side by side)."""
    if mode == NCHW_FP32:
        return Precision("fp32", torch.device(device).type, reason="baseline: default layout")
    return resolve_precision(mode, device)


_logged: set[tuple[str, str]] = set()


def log_precision(p: Precision, what: str) -> None:
    """Log the choice once per process and use (``what``: "training", "inference")."""
    key = (what, p.describe())
    if key not in _logged:
        _logged.add(key)
        LOGGER.info("%s precision: %s", what, p.describe())
