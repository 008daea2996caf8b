"""The weakly-supervised stage: pseudo labels (predict.py --pseudo), their layout as read by
utils.datasplits.resolve_split, WeaklyTask's data (confidence filter, weights, ignore masks) and the
chain train_main.py -> predict.py --pseudo -> train_weakly.py end to end."""
from __future__ import annotations

import shutil
import types

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tests.conftest import REPO
from utils import io as uio
from utils import tasks
from utils.config import Hyp, load_config
from utils.dataset import CellDataset, collate_fn
from utils.inference import AWFSegmenter
from utils.loss import AWFLoss
from utils.options import TrainOptions
from utils.predict_folder import PSEUDO_IGNORE_HIGH, PSEUDO_IGNORE_LOW, uncertain_mask
from utils.routing import Overrides, load_routing
from utils.synthetic import write_dataset
from utils.targets import height_map

S = 64          # network image size of the tests (pixels)
TRAIN = ["--img", str(S), "--batch", "2", "--workers", "0", "--device", "cpu", "--seed", "1",
         "--epochs", "1"]
FL_HYP = "data/hyps/hyp.ws_fluorescence.yaml"


def _hyp_file(tmp_path, pseudo_conf: float):
    """hyp.ws_fluorescence.yaml with another pseudo_conf."""
    hyp = yaml.safe_load((REPO / FL_HYP).read_text())
    hyp["pseudo_conf"] = pseudo_conf
    path = tmp_path / f"hyp_{pseudo_conf}.yaml"
    path.write_text(yaml.safe_dump(hyp))
    return path


def test_uncertain_mask_is_the_unsure_background():
    fg = np.array([[0.1, 0.31, 0.5, 0.69, 0.7, 0.9]], np.float32)
    label = np.array([[0, 0, 0, 3, 0, 3]], np.int32)
    assert PSEUDO_IGNORE_LOW < 0.5 < PSEUDO_IGNORE_HIGH
    np.testing.assert_array_equal(uncertain_mask(fg, label), [[False, True, True, False, False, False]])


def test_segmenter_exposes_the_foreground_map():
    from models.awf import AWF
    torch.manual_seed(0)
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    for scale in (1.0, 0.5):
        params = load_routing().inference_params("fl", Overrides(scale=scale))
        result = AWFSegmenter(AWF.from_config({}), "cpu", params).segment(image)
        assert result.fg.shape == result.label.shape == (40, 56) and result.fg.dtype == np.float32
        assert 0.0 <= result.fg.min() and result.fg.max() <= 1.0


@pytest.fixture
def weakly_data(tmp_path):
    """Labelled set (fl, bf, gs cycling) + a pseudo-labelled set in the NeurIPS layout whose
    predict.py output went to labels/ (labels/confidence.csv, labels/NAME_ignore.png)."""
    write_dataset(tmp_path / "lab", 6, size=(72, 72), seed=0, size_range=(10, 24))
    pseudo = write_dataset(tmp_path / "unl", 6, size=(72, 72), seed=5, size_range=(10, 24))
    (pseudo / "meta.csv").unlink()  # unlabeled images: modality from the classifier
    # fl images are synth_0000 and synth_0003; synth_0003 is under every hyp's pseudo_conf
    (pseudo / "labels" / "confidence.csv").write_text(
        "name,image,confidence\nsynth_0000,x,0.8\nsynth_0001,x,0.9\nsynth_0002,x,0.9\n"
        "synth_0003,x,0.2\nsynth_0004,x,0.9\nsynth_0005,x,0.9\n")
    ignore = np.zeros((72, 72), np.uint8)
    ignore[:, :36] = 255
    uio.write_image(pseudo / "labels" / "synth_0000_ignore.png", ignore)
    cfg = tmp_path / "weakly.yaml"
    cfg.write_text(yaml.safe_dump({"path": ".", "train": ["lab"], "val": ["lab"], "pseudo": ["unl"],
                                   "modality": "fl"}))
    return cfg


def _task(cfg, hyp_path, monkeypatch, tmp_path):
    monkeypatch.setattr(tasks, "CACHE_DIR", tmp_path / "cache")
    opt = TrainOptions(data=str(cfg), hyp=str(hyp_path), img=S)
    return tasks.WeaklyTask(opt, load_config(Hyp, hyp_path))


def test_weakly_task_filters_weights_and_ignores(weakly_data, tmp_path, monkeypatch):
    task = _task(weakly_data, _hyp_file(tmp_path, 0.5), monkeypatch, tmp_path)
    names = [(s.image.parent.parent.name, s.image.stem, s.confidence) for s in task.train_samples]
    assert names == [("lab", "synth_0000", 1.0), ("lab", "synth_0003", 1.0), ("unl", "synth_0000", 0.8)]
    assert all(s.modality == "fl" for s in task.train_samples + task.val_samples)
    ds = CellDataset(task.train_samples, S, task.hyp, augment=False, cache=task.cache)
    batch = collate_fn([ds[i] for i in range(len(ds))])
    assert batch["weight"].tolist() == pytest.approx([1.0, 1.0, 0.8])
    assert not batch["ignore"][:2].any()
    np.testing.assert_array_equal(batch["ignore"][2, :64, :36].numpy(), True)   # eval crop: top-left
    assert not batch["ignore"][2, :, 36:].any()

    # the loss sees none of the ignored pixels: changing their targets changes nothing
    loss = AWFLoss(types.SimpleNamespace(strides=[8, 16, 32]), task.hyp.loss)
    torch.manual_seed(0)
    fg, height = torch.randn(3, 1, S, S), torch.randn(3, 1, S, S)
    batch["fg"] = (batch["label"] > 0).float()
    batch["height"] = torch.from_numpy(np.stack([height_map(lb.numpy()) for lb in batch["label"]]))
    base = loss.pixel_loss(fg, height, batch)
    changed = dict(batch, fg=batch["fg"].clone(), height=batch["height"].clone())
    changed["fg"][2, :, :36] = 1 - changed["fg"][2, :, :36]
    changed["height"][2, :, :36] += 5.0
    for a, b in zip(base, loss.pixel_loss(fg, height, changed)):
        assert torch.allclose(a, b)
    changed["fg"][2, :, 40:] = 1 - changed["fg"][2, :, 40:]
    assert not torch.allclose(base[0], loss.pixel_loss(fg, height, changed)[0])


def test_weakly_task_confidence_filter_and_true_labels_win(weakly_data, tmp_path, monkeypatch):
    task = _task(weakly_data, _hyp_file(tmp_path, 0.85), monkeypatch, tmp_path)
    assert all(s.image.parent.parent.name == "lab" for s in task.train_samples)  # 0.8 < 0.85
    # pseudo labels of an image that also has its true label: the true label is used
    cfg = yaml.safe_load(weakly_data.read_text())
    cfg["pseudo"] = ["unl", "lab"]
    weakly_data.write_text(yaml.safe_dump(cfg))
    task = _task(weakly_data, _hyp_file(tmp_path, 0.5), monkeypatch, tmp_path)
    assert [s.confidence for s in task.train_samples if s.image.parent.parent.name == "lab"] == [1.0, 1.0]


def test_chain_baseline_pseudo_weakly(tmp_path, run_script):
    """train_main.py -> predict.py -i DATA.yaml --pseudo -> train_weakly.py (the semi layout:
    the pseudo entry is predict.py's confidence.csv, the images stay where they are)."""
    write_dataset(tmp_path / "data" / "lab", 6, size=(80, 80), seed=0, size_range=(10, 24))
    write_dataset(tmp_path / "data" / "unl", 6, size=(80, 80), seed=7, size_range=(10, 24))
    shutil.rmtree(tmp_path / "data" / "unl" / "labels")  # unlabeled: no labels at all
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"path": "data", "train": ["lab"], "val": ["lab"],
                                    "unlabeled": ["unl"]}))
    run_script(["train_main.py", "--data", base, "--hyp", "data/hyps/hyp.labeled.yaml", *TRAIN,
                "--project", tmp_path / "runs", "--name", "base"])
    last = tmp_path / "runs" / "base" / "weights" / "last.pt"
    pseudo = tmp_path / "pseudo"
    run_script(["predict.py", "-i", base, "-o", pseudo, "--ckpt", last, "--device", "cpu", "--pseudo"])
    conf = pd.read_csv(pseudo / "confidence.csv")
    assert len(conf) == 6 and {"name", "image", "confidence"} <= set(conf.columns)
    for name in conf["name"]:
        assert (pseudo / f"{name}_label.tiff").is_file() and (pseudo / f"{name}_ignore.png").is_file()
    weakly = tmp_path / "weakly.yaml"
    weakly.write_text(yaml.safe_dump({"path": "data", "train": ["lab"], "val": ["lab"],
                                      "pseudo": ["pseudo/confidence.csv"], "modality": "fl"}))
    proc = run_script(["train_weakly.py", "--data", weakly, "--hyp", _hyp_file(tmp_path, 0.0),
                       "--weights", last, *TRAIN, "--project", tmp_path / "runs", "--name", "ws_fl"])
    assert "2 labelled + 2 of 2 pseudo-labelled images" in proc.stderr
    run = tmp_path / "runs" / "ws_fl"
    ckpt = torch.load(run / "weights" / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["kind"] == "awf" and ckpt["opt"]["weights"] == str(last)
    results = pd.read_csv(run / "results.csv")
    assert len(results) == 1 and "val/f1" in results.columns
