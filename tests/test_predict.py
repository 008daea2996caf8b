"""predict.py and evaluate.py end to end: outputs, failures, routing, and metric parity."""
import math
import re
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import utils.routing
from utils.branch_settings import BranchSettings
from utils.checkpoint import save_checkpoint_atomic
from utils.config import ConfigError
from utils.inference import Segmentation, median_diameter
from utils.io import read_image, read_label
from utils.routing import (DEFAULT_ROUTING, OmniRule, Overrides, Router, leave_one_out,
                           load_routing)
from tests.conftest import REPO

# The original framework's rule (its gs branch): AWF unsure, or Omnipose clearly surer.
ORIGINAL_RULE = OmniRule(enabled=True, modalities=["gs"], awf_conf_below=0.8, omni_margin=0.05,
                         diameter_ratio_above=math.inf)


def _images(synthetic_data) -> Path:
    return synthetic_data.parent / "set"


def test_predict_writes_labels_and_reports_bad_files(tmp_path, trained_ckpt, synthetic_data, run_script):
    inp = tmp_path / "in"
    shutil.copytree(_images(synthetic_data) / "images", inp)
    (inp / "corrupt.tif").write_bytes(b"II*\x00garbage")
    proc = run_script(["predict.py", "-i", inp, "-o", tmp_path / "out", "--ckpt", trained_ckpt,
                       "--device", "cpu", "--save-overlay", "--conf-thres", "0.001"], check=False)
    assert proc.returncode == 1  # one failure, the rest done
    assert "corrupt.tif" in proc.stderr
    for img in sorted(inp.glob("synth_*")):
        label = read_label(tmp_path / "out" / f"{img.stem}_label.tiff")
        assert label.shape == read_image(img).shape[:2]
        assert (tmp_path / "out" / f"{img.stem}_overlay.png").is_file()
    assert not list((tmp_path / "out").glob(".*tmp*"))  # nothing half-written left
    records = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert set(records[records.status == "ok"]["modality"]) == {"bf", "fl", "gs"}
    assert list(records[records.status == "failed"]["name"]) == ["corrupt"]  # listed with its status


def test_evaluate_f1_equals_compute_metric(tmp_path, trained_ckpt, synthetic_data, run_script):
    root = _images(synthetic_data)
    run_script(["evaluate.py", "-i", root, "-o", tmp_path / "detail.csv", "--ckpt", trained_ckpt,
                "--device", "cpu", "--save-dir", tmp_path / "pred", "--conf-thres", "0.001"])
    ev = pd.read_csv(tmp_path / "detail.csv").sort_values("names").reset_index(drop=True)
    assert {"modality", "seconds", "F1", "correct_num(TP)", "confidence"} <= set(ev.columns)
    conf = ev["confidence"]  # mean fg probability over pixels above 0.5: 0 (none) or (0.5, 1]
    assert ((conf == 0) | ((conf > 0.5) & (conf <= 1))).all()
    run_script(["compute_metric.py", "-g", root / "labels", "-s", tmp_path / "pred", "--gt_suffix",
                "_label.tiff", "-o", tmp_path, "-n", "cm"])
    cm = pd.read_csv(tmp_path / "cm-0.5.csv").sort_values("names").reset_index(drop=True)
    cols = ["names", "true_num", "pred_num", "correct_num(TP)", "missed_num(FN)", "wrong_num(FP)",
            "precision", "recall", "F1"]
    pd.testing.assert_frame_equal(ev[cols], cm[cols], check_dtype=False)


def test_evaluate_several_sources_at_once(tmp_path, trained_ckpt, synthetic_data, run_script):
    """Several folders, or a dataset YAML with sources: one CSV with a source column, and a row
    per source in the summary whose figures are those of each folder evaluated alone."""
    root = _images(synthetic_data)
    for name, keep in (("alpha", slice(0, 3)), ("beta", slice(3, 8))):
        for sub in ("images", "labels"):
            (tmp_path / name / sub).mkdir(parents=True)
        for img in sorted((root / "images").iterdir())[keep]:
            shutil.copy(img, tmp_path / name / "images")
            shutil.copy(root / "labels" / f"{img.stem}_label.tiff", tmp_path / name / "labels")
    common = ["--ckpt", trained_ckpt, "--device", "cpu", "--conf-thres", "0.001"]
    proc = run_script(["evaluate.py", "-i", tmp_path / "alpha", tmp_path / "beta",
                       "-o", tmp_path / "both.csv", *common])
    both = pd.read_csv(tmp_path / "both.csv")
    assert both.groupby("source").size().to_dict() == {"alpha": 3, "beta": 5}
    assert "source alpha" in proc.stdout and "source beta" in proc.stdout
    run_script(["evaluate.py", "-i", tmp_path / "beta", "-o", tmp_path / "beta.csv", *common])
    alone = pd.read_csv(tmp_path / "beta.csv")
    assert np.isclose(alone["F1"].mean(), both[both["source"] == "beta"]["F1"].mean())
    (tmp_path / "d.yaml").write_text(
        "path: .\nval: [alpha, beta]\nsources:\n  first: {match: 'alpha/*'}\n  second: {match: 'beta/*'}\n")
    proc = run_script(["evaluate.py", "-i", tmp_path / "d.yaml", "-o", tmp_path / "y.csv", *common])
    assert pd.read_csv(tmp_path / "y.csv").groupby("source").size().to_dict() == {"first": 3, "second": 5}
    assert "source second" in proc.stdout


def _save_awf(path):
    from models.awf import AWF, AWFConfig
    model = AWF(AWFConfig())
    save_checkpoint_atomic({"kind": "awf", "model": model.state_dict(),
                            "model_config": model.config_dict()}, path)


def test_router_falls_back_to_general_and_loads_once(tmp_path, caplog):
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    _save_awf(ckpts / "general.pt")
    router = Router(load_routing(ckpt_dir="ckpts"), torch.device("cpu"), base_dir=tmp_path)
    assert router.branch_path("bf") == ckpts / "general.pt"
    with caplog.at_level("WARNING"):
        assert router.branch_path("fl") == ckpts / "general.pt"
        assert router.branch_path("fl") == ckpts / "general.pt"
    assert sum("fl.pt missing" in r.message for r in caplog.records) == 1  # warned once
    assert router.branch_path("omni") is None
    raw = np.full((64, 64, 1), 5, np.uint8)  # fluorescence: dark background, bright nuclei
    raw[10:20, 10:20] = raw[40:52, 30:44] = 200
    image = np.repeat(raw, 3, axis=2)
    for _ in range(2):
        result = router.route_and_segment(raw, image)
        assert result.label.shape == (64, 64) and result.modality == "fl"
        assert result.branch == "general" and set(result.timings) == {"modality", "network",
                                                                      "postprocess"}
    assert len(router._models) == 1  # the general model loaded once for both calls
    assert router.params("bf").detection == BranchSettings(0.25, 0.25, 3000)  # data/routing.yaml
    assert router.params("fl").detection == BranchSettings(0.30, 0.30, 3000)


def test_routing_yaml_holds_the_shipped_values_and_the_docstring_shows_them():
    cfg = load_routing()
    assert cfg == load_routing(REPO / "data" / "routing.yaml") and DEFAULT_ROUTING.is_file()
    assert cfg.model_dict == {"general": "general.pt", "bf": "bf.pt", "gs": "grayscale.pt",
                              "fl": "fl.pt", "omni": "omnipose.pt"} and cfg.general == "general"
    assert cfg.detection == {"bf": BranchSettings(0.25, 0.25), "gs": BranchSettings(0.30, 0.25),
                               "fl": BranchSettings(0.30, 0.30)}  # utils.tune_nms's choice
    assert cfg.omni_rule == OmniRule(enabled=True, modalities=["fl"], awf_conf_below=0.0,
                                     omni_margin=0.0, diameter_ratio_above=1.025)
    block = re.search(r"\n\n((?:    .*\n)+)\n", utils.routing.__doc__).group(1)
    assert yaml.safe_load(textwrap.dedent(block)) == yaml.safe_load(DEFAULT_ROUTING.read_text())


def test_routing_yaml_is_validated(tmp_path):
    shipped = yaml.safe_load(DEFAULT_ROUTING.read_text())
    for change, match in (({"detection": {"bf": shipped["detection"]["bf"]}}, "detection"),
                          ({"omni_rule": {**shipped["omni_rule"], "margin": 0.1}}, "margin"),
                          ({"omni_rule": {**shipped["omni_rule"], "modalities": ["dic"]}}, "dic")):
        path = tmp_path / "routing.yaml"
        path.write_text(yaml.safe_dump({**shipped, **change}))
        with pytest.raises(ConfigError, match=match):
            load_routing(path)
    with pytest.raises(ConfigError, match="missing required key general"):
        path.write_text(yaml.safe_dump({k: v for k, v in shipped.items() if k != "general"}))
        load_routing(path)
    with pytest.raises(ConfigError, match="no such file"):
        load_routing(tmp_path / "missing.yaml")  # never a silent fallback


def test_routing_yaml_reads_the_old_postprocess_key(tmp_path, caplog):
    """``postprocess:`` (the key's old name, in user files) is read as ``detection:`` with one
    warning; both keys at once are an error."""
    shipped = yaml.safe_load(DEFAULT_ROUTING.read_text())
    old = {("postprocess" if k == "detection" else k): v for k, v in shipped.items()}
    path = tmp_path / "routing.yaml"
    path.write_text(yaml.safe_dump(old))
    with caplog.at_level("WARNING"):
        assert load_routing(path) == load_routing()
    assert sum("postprocess is deprecated" in r.message for r in caplog.records) == 1
    path.write_text(yaml.safe_dump({**shipped, "postprocess": shipped["detection"]}))
    with pytest.raises(ConfigError, match="postprocess is the old name of detection"):
        load_routing(path)


def test_omni_rule():
    rule = ORIGINAL_RULE
    assert rule.prefer_omnipose(awf_conf=0.7, omni_conf=0.1)      # AWF unsure
    assert rule.prefer_omnipose(awf_conf=0.85, omni_conf=0.91)    # Omnipose clearly surer
    assert not rule.prefer_omnipose(awf_conf=0.85, omni_conf=0.88)
    assert not rule.prefer_omnipose(0.85, 0.88, awf_diameter=10, omni_diameter=50)  # off: .inf
    size = OmniRule(enabled=True, modalities=["fl"], awf_conf_below=0.0, omni_margin=1.0,
                    diameter_ratio_above=1.1)
    assert size.prefer_omnipose(0.9, 0.9, awf_diameter=10, omni_diameter=11.5)
    assert not size.prefer_omnipose(0.9, 0.9, awf_diameter=10, omni_diameter=10.5)
    assert not size.prefer_omnipose(0.9, 0.9, awf_diameter=0, omni_diameter=10)  # AWF found none
    many = size.prefer_omnipose(np.full(3, 0.9), np.full(3, 0.9), np.array([10, 10, 0]),
                                np.array([12, 10, 5]))  # one entry per image
    assert many.tolist() == [True, False, False]


class _FixedSegmenter:
    def __init__(self, label, conf):
        self.label, self.conf = label, conf

    def segment(self, image, diameter=0.0):
        self.hint = diameter  # the router's: the AWF's measured diameter for the Omnipose branch
        return Segmentation(self.label, fg_conf=self.conf, diameter=median_diameter(self.label),
                            n_cells=int(self.label.max()), timings={"network": 1.0})


def test_router_applies_the_omni_rule_per_modality(tmp_path, monkeypatch):
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for name in ("general.pt", "omnipose.pt"):
        (ckpts / name).write_bytes(b"")  # never loaded: the segmenters are stand-ins
    split = np.zeros((64, 64), np.int32)
    split[10:30, 10:20], split[10:30, 20:30] = 1, 2   # the AWF cut one 20x20 cell in two
    whole = (split > 0).astype(np.int32)              # Omnipose kept it whole
    fake = {"general": _FixedSegmenter(split, 0.9), "omnipose": _FixedSegmenter(whole, 0.9)}
    raw = np.full((64, 64, 1), 5, np.uint8)
    raw[10:30, 10:30] = 200                           # fluorescence
    image = np.repeat(raw, 3, axis=2)
    for modalities, ratio, branch in ((["fl"], 1.1, "omnipose"), (["fl"], 1.5, "general"),
                                      (["gs"], 1.1, "general")):
        rule = OmniRule(enabled=True, modalities=modalities, awf_conf_below=0.0, omni_margin=1.0,
                        diameter_ratio_above=ratio)   # sqrt(2) = 1.41 times the diameter
        router = Router(load_routing(ckpt_dir="ckpts", omni_rule=rule), torch.device("cpu"),
                        base_dir=tmp_path)
        monkeypatch.setattr(router, "segmenter", lambda path, modality: fake[path.stem])
        result = router.route_and_segment(raw, image)
        assert result.modality == "fl" and result.branch == branch
        if modalities == ["fl"]:  # Omnipose ran, sized by the AWF's cells
            assert fake["omnipose"].hint == median_diameter(split) > 0
        assert result.label.max() == (1 if branch == "omnipose" else 2)
        # the time of every branch that ran: both when the rule applies
        assert result.timings["network"] == (2.0 if modalities == ["fl"] else 1.0)


class _BlobModel(torch.nn.Module):
    """A stand-in network that is flip-equivariant by construction: its one box is the bounding
    box of the bright pixels (pixel i spans [i, i+1)), its foreground the image brightness."""

    def forward(self, x):
        logit = (x[:, :1] - 0.5) * 20.0
        return {"det": x[:, 0], "fg": logit, "height": x[:, :1] * 2.0}

    def decode(self, det):
        out = []
        for img in det:
            ys, xs = torch.nonzero(img > 0.5, as_tuple=True)
            x1, x2, y1, y2 = xs.min(), xs.max() + 1.0, ys.min(), ys.max() + 1.0
            out.append(torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, torch.tensor(0.9)]))
        return torch.stack(out)[:, None].float()


def test_flip_tta_maps_boxes_and_maps_back_to_the_image():
    from utils.inference import AWFSegmenter
    image = np.zeros((70, 90, 3), np.uint8)  # not a multiple of the stride: padding is involved
    image[5:20, 60:84] = 255                 # an off-centre, non-square blob
    image[50:66, 3:9] = 100                  # a dim asymmetric patch that only the maps see
    plain, tta = (AWFSegmenter(_BlobModel(), "cpu",
                               load_routing().inference_params("fl", Overrides(tta=flag)))
                  for flag in (False, True))
    pred0, fg0, ht0 = plain.raw_outputs(image)
    pred, fg, ht = tta.raw_outputs(image)
    assert pred.shape == (3, 5)  # identity, left-right and up-down boxes pooled before NMS
    torch.testing.assert_close(pred, pred0.expand(3, 5))
    torch.testing.assert_close(pred0[0, :4], torch.tensor([72.0, 12.5, 24.0, 15.0]))
    np.testing.assert_allclose(fg, fg0, atol=1e-6)
    np.testing.assert_allclose(ht, ht0, atol=1e-6)
    det, _, _ = tta.predict_maps(image)
    np.testing.assert_allclose(det[:, :4], [[60, 5, 84, 20]], atol=1e-4)  # one box after NMS


def test_median_diameter_is_the_equal_area_circle_of_the_median_cell():
    from utils.inference import median_diameter
    label = np.zeros((64, 64), np.uint16)
    label[0:10, 0:10], label[20:40, 20:40], label[40:64, 40:64] = 1, 5, 9  # ids need not be consecutive
    assert median_diameter(label) == pytest.approx(np.sqrt(4 * 400 / np.pi))
    assert median_diameter(np.zeros((8, 8), np.int32)) == 0.0


def test_omni_rule_leave_one_out_scores_each_image_with_a_rule_tuned_without_it():
    scores = np.array([[0.5, 0.5, 0.5],      # rule 0: AWF alone
                       [1.0, 0.45, 0.45]])   # rule 1: best in-sample only thanks to image 0
    assert scores.sum(axis=1).argmax() == 1
    assert leave_one_out(scores) == pytest.approx((0.5 + 0.45 + 0.45) / 3)
    assert leave_one_out(np.array([[0.5, 0.5], [0.5, 0.5]])) == 0.5  # ties keep rule 0


def test_median_diameter_over_row_blocks_equals_one_pass(monkeypatch):
    import utils.inference as inf
    rng = np.random.default_rng(0)
    label = rng.integers(0, 40, size=(97, 53)).astype(np.uint32)
    whole = inf.median_diameter(label)
    monkeypatch.setattr(inf, "DIAMETER_BLOCK_PIXELS", 200)  # 3 rows per block, a partial last one
    assert inf.median_diameter(label) == whole
    area = np.bincount(label.ravel().astype(np.int64))[1:]
    assert whole == pytest.approx(np.sqrt(4 * np.median(area) / np.pi))
