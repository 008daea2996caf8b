"""train_main.py end to end on synthetic data: run directory, DDP under torchrun, exact resume."""
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from tests.conftest import REPO
from models.awf import AWF
from utils.checkpoint import model_state
from utils.config import ConfigError
from utils.engine import freeze_modules, increment_path, resize_batch, warmup_iters
from utils.precision import resolve_precision

COMMON = ["--hyp", "data/hyps/hyp.labeled.yaml", "--img", "64", "--batch", "2", "--workers", "0",
          "--device", "cpu", "--seed", "3"]


def _weights(path):
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt


def test_single_process_run_directory(tmp_path, synthetic_data, run_script):
    run_script(["train_main.py", "--data", synthetic_data, *COMMON, "--epochs", "2",
                "--project", tmp_path, "--name", "exp", "--save-period", "1"])
    run = tmp_path / "exp"
    for name in ("weights/last.pt", "weights/best.pt", "weights/epoch0.pt", "weights/epoch1.pt",
                 "opt.yaml", "hyp.yaml", "results.csv", "results.png"):
        assert (run / name).is_file(), name
    results = pd.read_csv(run / "results.csv")
    assert list(results["epoch"]) == [0, 1]
    for col in ("train/loss", "lr", "val/f1", "val/precision", "val/recall", "seconds"):
        assert col in results.columns
    ckpt = _weights(run / "weights" / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["kind"] == "awf"
    assert ckpt["model_config"]["anchors"]
    # a second run with the same name would go to exp2, then exp3
    assert increment_path(run, exist_ok=False) == tmp_path / "exp2"
    (tmp_path / "exp2").mkdir()
    assert increment_path(run, exist_ok=False) == tmp_path / "exp3"
    assert increment_path(run, exist_ok=True) == run


def test_ddp_torchrun_two_processes_gloo(tmp_path, synthetic_data, run_script):
    proc = run_script(["-m", "torch.distributed.run", "--nproc_per_node", "2", "train_main.py",
                       "--data", synthetic_data, *COMMON, "--batch", "4", "--epochs", "1",
                       "--project", tmp_path, "--name", "ddp", "--sync-bn"],
                      env_extra={"OMP_NUM_THREADS": "1"})
    run = tmp_path / "ddp"
    assert (run / "weights" / "last.pt").is_file()
    assert not (tmp_path / "ddp2").exists()  # only rank 0 made a run directory
    assert "gloo" in proc.stderr
    assert len(pd.read_csv(run / "results.csv")) == 1


@pytest.mark.parametrize("amp", ["fp32", "auto"])
def test_resume_after_kill_continues_exactly(tmp_path, synthetic_data, run_script, amp):
    """Under fp32 and under the auto policy (bf16 + channels_last on a CPU with native bf16)."""
    if amp == "auto" and resolve_precision("auto", "cpu").mode == "fp32":
        pytest.skip("auto is fp32 on this CPU: the fp32 case covers it")
    args = ["train_main.py", "--data", synthetic_data, *COMMON, "--epochs", "2", "--project", tmp_path,
            "--amp", amp]
    run_script([*args, "--name", "straight"])
    proc = subprocess.Popen([sys.executable, *map(str, args), "--name", "killed"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "killed" / "weights" / "last.pt"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-run, after epoch 0 was saved
    proc.wait()
    epoch_killed = _weights(last)["epoch"]
    if epoch_killed >= 1:
        pytest.skip("the run finished before it could be killed")
    run_script(["train_main.py", "--resume", last])
    a = _weights(tmp_path / "straight" / "weights" / "last.pt")
    b = _weights(last)
    assert b["epoch"] == 1
    for key in ("model", "ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resume"
    assert list(pd.read_csv(tmp_path / "killed" / "results.csv")["epoch"]) == [0, 1]


def test_nan_loss_stops_without_touching_checkpoints(tmp_path, synthetic_data, run_script):
    hyp = tmp_path / "nan.yaml"
    hyp.write_text((REPO / "data/hyps/hyp.labeled.yaml").read_text().replace("lr0: 0.001", "lr0: 1.0e+30"))
    args = ["train_main.py", "--data", synthetic_data, *COMMON, "--hyp", hyp, "--epochs", "3",
            "--project", tmp_path, "--name", "nan"]
    proc = run_script(args, check=False)
    assert proc.returncode != 0
    assert "NaN" in proc.stderr or "non-finite" in proc.stderr
    last = tmp_path / "nan" / "weights" / "last.pt"
    if last.exists():  # whatever was saved is finite
        ckpt = _weights(last)
        assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_cfg_trains_three_detection_levels(tmp_path, synthetic_data, run_script):
    run_script(["train_main.py", "--data", synthetic_data, *COMMON, "--epochs", "1",
                "--project", tmp_path, "--name", "p345", "--cfg", "models/awf_p345.yaml"])
    cfg = _weights(tmp_path / "p345" / "weights" / "last.pt")["model_config"]
    assert cfg["strides"] == [8, 16, 32] and [len(a) for a in cfg["anchors"]] == [6, 6, 6]


def test_frozen_modules_keep_their_weights_and_the_rest_trains(tmp_path, synthetic_data,
                                                             trained_ckpt, run_script):
    """hyp freeze: the named modules' parameters leave training as they came in."""
    frozen = ["backbone.conv1", "backbone.bn1", "backbone.layer1"]
    hyp = tmp_path / "freeze.yaml"
    hyp.write_text((REPO / "data/hyps/hyp.labeled.yaml").read_text() + f"freeze: {frozen}\n")
    run_script(["train_main.py", "--data", synthetic_data, *COMMON, "--hyp", hyp, "--epochs", "1",
                "--weights", trained_ckpt, "--project", tmp_path, "--name", "fz"])
    start = model_state(_weights(trained_ckpt))
    end = _weights(tmp_path / "fz" / "weights" / "last.pt")["model"]
    params = {n for n, _ in AWF.from_config(_weights(trained_ckpt)["model_config"]).named_parameters()}
    moved = {n for n in params if not torch.equal(start[n].float(), end[n].float())}
    assert not {n for n in moved if n.startswith(tuple(f + "." for f in frozen))}
    assert any(n.startswith("backbone.layer2") for n in moved)


def test_freeze_refuses_an_unknown_module_and_freezes_nothing():
    model = AWF()
    with pytest.raises(ConfigError, match="'backbone.layer9'"):
        freeze_modules(model, ["backbone.layer1", "backbone.layer9"])
    assert all(p.requires_grad for p in model.parameters())  # nothing frozen by a bad list
    assert freeze_modules(model, ["backbone.layer1"]) == len(list(model.backbone.layer1.parameters()))


def test_warmup_is_capped_for_short_runs():
    assert warmup_iters(3.0, 49, 40, 100) == 147     # long run: warmup_epochs * batches
    assert warmup_iters(3.0, 25, 20, 100) == 100     # at least warmup_min_iters steps
    assert warmup_iters(1.0, 8, 55, 100) == 100      # finetuning with YOLOv5's minimum: 12 epochs
    assert warmup_iters(1.0, 8, 55, 0) == 8          # ... and without it: warmup_epochs
    assert warmup_iters(1.0, 4, 6, 100) == 7         # 24 steps in all: at most 30% of them
    assert warmup_iters(0.0, 49, 40, 100) == -1      # no warm-up


def test_multiscale_resize_keeps_boxes_on_their_cells():
    img = torch.zeros((2, 3, 64, 64), dtype=torch.uint8)
    img[1, :, 8:24, 16:40] = 255
    fg = (img[:, 0] > 0).float()
    batch = {"img": img.float() / 255, "fg": fg, "height": fg * 0.5, "weight": torch.ones(2),
             "targets": torch.tensor([[1.0, 16, 8, 40, 24]])}
    out = resize_batch(batch, 128, bilinear_keys=("height",))
    assert out["img"].shape == (2, 3, 128, 128) and out["fg"].shape == (2, 128, 128)
    torch.testing.assert_close(out["targets"], torch.tensor([[1.0, 32, 16, 80, 48]]))
    ys, xs = torch.nonzero(out["fg"][1] > 0, as_tuple=True)  # nearest: still exactly 0/1
    assert set(out["fg"].unique().tolist()) == {0.0, 1.0}
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (32, 80, 16, 48)
    assert out["weight"] is batch["weight"] and batch["img"].shape[-1] == 64  # input untouched


def test_multiscale_scales_omnipose_distances_with_the_image():
    import cv2
    import numpy as np
    from utils.flows import TARGET_CHANNELS, label_to_tensor
    from utils.tasks import OmniposeTask
    label = np.zeros((64, 64), np.int32)
    cv2.circle(label, (32, 32), 12, 1, -1)
    big = cv2.resize(label, (128, 128), interpolation=cv2.INTER_NEAREST)
    d = TARGET_CHANNELS.index("dist")
    batch = {"img": torch.zeros((1, 3, 64, 64)), "omni": label_to_tensor(label)[None]}
    task = OmniposeTask.__new__(OmniposeTask)  # the hook needs no options
    out = task.rescale_targets(resize_batch(batch, 128, task.bilinear_map_keys()), 2.0)
    want = label_to_tensor(big)[d]
    assert abs(float(out["omni"][0, d].max()) - float(want.max())) < 0.1 * float(want.max())
    assert float(out["omni"][0, d].min()) == float(want.min())  # background value unchanged
    assert float(batch["omni"][0, d].max()) < 0.6 * float(want.max())  # input untouched


def test_validation_summary_per_modality_and_source():
    from utils.tasks import summarize_validation
    rows = [{"f1": 1.0, "precision": 1.0, "recall": 1.0, "modality": "gs", "source": "dic"},
            {"f1": 0.5, "precision": 0.5, "recall": 0.5, "modality": "gs", "source": "psc"},
            {"f1": 0.0, "precision": 0.0, "recall": 0.0, "modality": "fl", "source": ""}]
    out = summarize_validation(rows)
    assert out["fitness"] == out["f1"] == 0.5
    assert out["f1_gs"] == 0.75 and out["f1_fl"] == 0.0
    assert out["f1_src_dic"] == 1.0 and out["f1_src_psc"] == 0.5 and "f1_src_" not in out


def test_time_budget_sets_the_epochs_after_the_first(tmp_path, synthetic_data, run_script):
    """--time: the epochs that fit the budget at the first epoch's pace (a tiny budget: one),
    saved in the checkpoint's options, so the run ends early with its checkpoints written."""
    run_script(["train_main.py", "--data", synthetic_data, *COMMON, "--epochs", "50",
                "--time", "0.001", "--project", tmp_path, "--name", "t"])
    ckpt = _weights(tmp_path / "t" / "weights" / "last.pt")
    assert ckpt["opt"]["epochs"] == 1 and ckpt["epoch"] == 0
    assert len(pd.read_csv(tmp_path / "t" / "results.csv")) == 1


def test_time_budget_counts_validation_and_checkpoint_writes():
    """--time: an epoch costs its training, its share of validation and the writes after it; a
    fit that left the writes out planned 57-74 epochs of a 10-minute finetuning that ran 46-55."""
    from utils.engine import epochs_in_budget
    # 300 s, after epoch 1 (20 s elapsed): 6 s training + 1.5 s validation + 1.5 s writes = 9 s
    # an epoch; this epoch's validation and writes (3 s) still to come: (300 - 23) // 9 = 30 more
    assert epochs_in_budget(300.0, 20.0, 6.0, 1.5, 1, 1.5, epoch=1) == 2 + 30
    assert epochs_in_budget(300.0, 20.0, 6.0, 1.5, 1, 0.0, epoch=1) == 2 + 37  # writes left out
    # validation every 4 epochs counts a quarter per epoch, and only pending when this one runs it
    assert epochs_in_budget(300.0, 20.0, 6.0, 4.0, 4, 1.0, epoch=1) == 2 + (279 // 8)
    assert epochs_in_budget(300.0, 20.0, 6.0, 4.0, 4, 1.0, epoch=3) == 4 + (275 // 8)
    assert epochs_in_budget(300.0, 400.0, 6.0, 0.0, 1, 0.0, epoch=0) == 1  # past the budget


def test_time_budget_is_fitted_again_until_half_way():
    """--time refits after the first two epochs, then every 5 while at most half are done (the
    first epochs of a CPU finetuning ran slower than the rest: planned on them, a run ended early);
    a plan that grows moves the half-way point with it."""
    from utils.engine import fits_time_after
    assert [e for e in range(60) if fits_time_after(e, 0, 60)] == [0, 1, 4, 9, 14, 19, 24, 29]
    assert [e for e in range(60) if fits_time_after(e, 0, 19)] == [0, 1, 4]
    assert fits_time_after(34, 0, 70) and not fits_time_after(34, 0, 69)
