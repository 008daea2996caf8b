"""Checkpoints: weights_only loading, one-line errors, atomic writes, shippable fp16 weights."""
import pickle

import pytest
import torch

from models.awf import AWF
from models.loading import load_model
from utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint_atomic, strip_checkpoint


class Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_corrupt_and_pickled_checkpoints_are_refused(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "bad.pt")
    assert "bad.pt" in str(err.value) and "\n" not in str(err.value)
    torch.save({"model": Payload()}, tmp_path / "evil.pt", pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "missing.pt")


def test_strip_gives_small_fp16_weights_that_predict_the_same(tmp_path):
    model = AWF().eval()
    ema = AWF().eval()
    full = {"kind": "awf", "model": model.state_dict(), "ema": ema.state_dict(),
            "optimizer": {"state": {}, "param_groups": []}, "epoch": 7, "best_fitness": 0.5,
            "model_config": ema.config_dict(), "hyp": {"lr0": 0.01}, "opt": {"img": 256}}
    save_checkpoint_atomic(full, tmp_path / "last.pt")
    strip_checkpoint(tmp_path / "last.pt", tmp_path / "general.pt", note="test")
    slim = torch.load(tmp_path / "general.pt", weights_only=True)
    assert "optimizer" not in slim and slim["epoch"] == 7
    assert all(v.dtype == torch.float16 for v in slim["model"].values() if v.is_floating_point())
    assert (tmp_path / "general.pt").stat().st_size < 25 * 2**20
    loaded = load_model(tmp_path / "general.pt")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = ema(x), loaded(x)  # the EMA weights are the ones shipped
    torch.testing.assert_close(a["fg"], b["fg"], atol=2e-2, rtol=2e-2)
    assert not list(tmp_path.glob(".*tmp*"))
