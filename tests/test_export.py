"""export.py: a random-init AWF checkpoint -> ONNX; onnxruntime matches PyTorch at several sizes."""
import numpy as np
import pytest
import torch

import export
from models.awf import AWF, AWFExport
from utils.checkpoint import save_checkpoint_atomic
from utils.export import OUTPUT_NAMES, export_input, max_relative_error, run_onnx

onnx = pytest.importorskip("onnx")  # requirements-dev.txt
pytest.importorskip("onnxruntime")

# onnxruntime vs PyTorch on CPU, max error relative to each output's largest magnitude
RTOL = 1e-4
TWO_LEVELS = {"anchors": [[22.0, 22.0, 46.0, 46.0], [99.0, 95.0, 199.0, 190.0]], "strides": [8, 16]}


def save_random_awf(path, config: dict | None = None, seed: int = 0) -> AWF:
    """A randomly initialised AWF saved in this project's checkpoint format; returns the model."""
    torch.manual_seed(seed)
    model = AWF.from_config(config or {}).eval()
    save_checkpoint_atomic({"kind": "awf", "model": model.state_dict(),
                            "model_config": model.config_dict()}, path)
    return model


@pytest.mark.parametrize("config", [None, TWO_LEVELS], ids=["default", "two_levels"])
def test_onnx_matches_torch_at_two_sizes(tmp_path, config, capsys):
    model = save_random_awf(tmp_path / "awf.pt", config)
    out = tmp_path / "awf.onnx"
    assert export.main(["--weights", str(tmp_path / "awf.pt"), "--img", "64", "96",
                        "--output", str(out)]) == 0
    assert str(out.resolve()) in capsys.readouterr().out
    onnx.checker.check_model(str(out))
    wrapper = AWFExport(model).eval()
    # sizes other than the traced one, batch 2 once: the dynamic axes must really be dynamic
    for batch, size in ((1, (128, 64)), (2, (96, 160))):
        x = export_input(size, batch=batch, seed=batch)
        with torch.no_grad():
            ref = [t.numpy() for t in wrapper(x)]
        got = run_onnx(out, x.numpy())
        for name, r, g in zip(OUTPUT_NAMES, ref, got):
            assert r.shape == g.shape, (name, size)
            assert max_relative_error(r, g) < RTOL, (name, size, max_relative_error(r, g))
        n_anchors = sum(model.na * (size[0] // s) * (size[1] // s) for s in model.strides)
        assert got[0].shape == (batch, n_anchors, 5)
        assert got[1].shape == got[2].shape == (batch, 1, *size)


def test_fixed_size_export_and_verify(tmp_path):
    save_random_awf(tmp_path / "awf.pt", {"neck_channels": 32, "decoder_channels": [16, 8]})
    assert export.main(["--weights", str(tmp_path / "awf.pt"), "--img", "64", "--no-dynamic",
                        "--verify"]) == 0
    graph = onnx.load(str(tmp_path / "awf.onnx")).graph
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 64, 64]


def test_bad_inputs_are_one_line_errors(tmp_path, caplog):
    assert export.main(["--weights", str(tmp_path / "missing.pt")]) == 1
    assert "no such checkpoint" in caplog.text
    save_random_awf(tmp_path / "awf.pt", {"neck_channels": 32, "decoder_channels": [16, 8]})
    assert export.main(["--weights", str(tmp_path / "awf.pt"), "--img", "100"]) == 1
    assert "multiples of 32" in caplog.text
    save_checkpoint_atomic({"kind": "omnipose", "model": {}}, tmp_path / "omni.pt")
    assert export.main(["--weights", str(tmp_path / "omni.pt")]) == 1
    assert "awf one is expected" in caplog.text


def test_max_relative_error():
    a = np.array([0.0, 2.0, -4.0])
    assert max_relative_error(a, a) == 0.0
    assert max_relative_error(a, a + [0.0, 0.0, 0.4]) == pytest.approx(0.1)
    assert max_relative_error(np.zeros(2), np.full(2, 1e-3)) == pytest.approx(1e-3)
    with pytest.raises(ValueError):
        max_relative_error(np.zeros(2), np.zeros(3))
