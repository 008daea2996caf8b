"""The precision policy (utils.precision): auto follows the hardware, losses and weights stay fp32."""
import numpy as np
import pytest
import torch

from tests.conftest import REPO
from utils import precision as up
from utils.precision import Precision, resolve_precision

NATIVE = lambda: (True, "stub: native bf16")          # noqa: E731
EMULATED = lambda: (False, "stub: no bf16 instructions")  # noqa: E731


def test_auto_follows_the_cpu_capability():
    yes = resolve_precision("auto", "cpu", native_bf16=NATIVE)
    assert (yes.mode, yes.dtype, yes.channels_last) == ("bf16", torch.bfloat16, True)
    assert "stub: native bf16" in yes.describe()
    no = resolve_precision("auto", "cpu", native_bf16=EMULATED)
    assert (no.mode, no.dtype, no.channels_last) == ("fp32", None, True)  # NHWC on every CPU
    assert "no bf16 instructions" in no.reason


def test_auto_is_fp16_on_cuda_and_forced_modes_win():
    def never():
        raise AssertionError("the CPU check must not run for CUDA or a forced mode")
    assert resolve_precision("auto", "cuda", native_bf16=never).dtype == torch.float16
    assert resolve_precision("fp32", "cpu", native_bf16=never).dtype is None
    assert resolve_precision("off", "cpu", native_bf16=never).mode == "fp32"  # the old name
    forced = resolve_precision("bf16", "cpu", native_bf16=never)
    assert forced.dtype == torch.bfloat16 and forced.channels_last
    assert not resolve_precision("bf16", "cuda", native_bf16=never).channels_last
    assert resolve_precision("fp32", "cpu", native_bf16=never).channels_last
    assert not resolve_precision("fp32", "cuda", native_bf16=never).channels_last
    assert not resolve_precision("auto", "cuda", native_bf16=never).channels_last
    with pytest.raises(ValueError, match="choose one of"):
        resolve_precision("int8", "cpu")


def test_cpu_detection_reads_torch_then_proc_cpuinfo(monkeypatch, tmp_path):
    for fn in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, fn, lambda: False, raising=False)
    info = tmp_path / "cpuinfo"
    info.write_text("processor: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    monkeypatch.setattr(up, "_cpuinfo_flags", lambda: up._read_flags(info))
    assert up.cpu_native_bf16()[0] is False
    info.write_text("processor: 0\nflags\t\t: fpu avx512f avx512_bf16\n")
    ok, why = up.cpu_native_bf16()
    assert ok and "avx512_bf16" in why
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    info.write_text("flags: fpu\n")
    assert up.cpu_native_bf16() == (True, "CPU reports avx512_bf16")


def test_policy_applies_autocast_and_memory_format():
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.rand(2, 3, 16, 16)
    p = Precision("bf16", "cpu", channels_last=True, reason="test")
    net = p.model(conv)
    assert net.weight.is_contiguous(memory_format=torch.channels_last)
    assert net.weight.dtype == torch.float32          # parameters stay fp32
    with p.autocast():
        y = net(p.input(x))
    assert y.dtype == torch.bfloat16
    with Precision("fp32", "cpu").autocast():
        assert conv(x).dtype == torch.float32


def test_fp32_channels_last_gives_the_outputs_of_the_default_layout():
    """The CPU's fp32 policy (NHWC) changes speed only: an AWF's outputs, and a backward pass's
    gradients, equal those of the default layout."""
    from models.awf import AWF, AWFConfig
    torch.manual_seed(0)
    plain = AWF(AWFConfig()).eval()
    nhwc_policy = resolve_precision("fp32", "cpu", native_bf16=EMULATED)
    nhwc = AWF(AWFConfig()).eval()
    nhwc.load_state_dict(plain.state_dict())
    nhwc = nhwc_policy.model(nhwc)
    x = torch.rand(1, 3, 96, 128)
    a, b = plain(x), nhwc(nhwc_policy.input(x))
    flat = [(k, t) for k, t in (a.items() if isinstance(a, dict) else enumerate(a)) if torch.is_tensor(t)]
    assert flat
    for k, t in flat:
        other = b[k]
        assert torch.allclose(t, other, atol=1e-5, rtol=1e-4), k
    sum(t.float().sum() for _, t in flat).backward()
    sum(b[k].float().sum() for k, _ in flat).backward()
    for (n, p), q in zip(plain.named_parameters(), nhwc.parameters()):
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=1e-4, rtol=1e-3), n


def _native_bf16():
    return up.cpu_native_bf16()[0]


@pytest.mark.skipif(not _native_bf16(), reason="bf16 is emulated on this CPU (many times slower)")
def test_bf16_labels_agree_with_fp32_labels():
    """The shipped weights on a bundled example: bf16 + channels_last against fp32."""
    from models.loading import load_model
    from utils.inference import AWFSegmenter
    from utils.io import load_image
    from utils.metrics import match_instances
    from utils.routing import load_routing
    image = load_image(REPO / "examples" / "fl_cells.png")
    model = load_model(REPO / "ckpts" / "general.pt")
    params = load_routing().inference_params("fl")
    fp32, bf16 = (AWFSegmenter(model, "cpu", params, precision=resolve_precision(amp, "cpu"))
                  .segment(image).label for amp in ("fp32", "bf16"))
    assert fp32.max() > 20
    assert match_instances(fp32, bf16, threshold=0.5).f1 >= 0.97
    assert not np.array_equal(fp32, np.zeros_like(fp32))
