"""finetune.py: a user's few labelled images (challenge or Cellpose layout) -> finetuned weights
that predict.py loads; pairing, splitting, safe _seg.npy reading, one-line refusals."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml

from tests.conftest import centroid_offsets
from utils.checkpoint import load_checkpoint
from utils.finetune import split_pairs
from utils.io import InputError, read_label, write_label
from utils.synthetic import write_dataset
from utils.user_labels import find_pairs, read_seg_npy, read_user_label

FAST = ["--epochs", "1", "--img", "64", "--batch", "2", "--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def challenge_set(tmp_path_factory):
    """4 fluorescence images with labels/NAME_label.tiff (the challenge layout)."""
    return write_dataset(tmp_path_factory.mktemp("ft") / "set", 4, modalities=("fl",),
                         size=(80, 80), seed=2, size_range=(14, 24))


def cellpose_copy(src, dst):
    """The same images in Cellpose's layout: masks beside the images, as _masks.tif, _masks.png
    and _seg.npy."""
    dst.mkdir()
    images = sorted((src / "images").iterdir())
    for i, image in enumerate(images):
        shutil.copy(image, dst / image.name)
        label = read_label(src / "labels" / f"{image.stem}_label.tiff")
        if i == 0:
            np.save(dst / f"{image.stem}_seg.npy", {"masks": label.astype(np.uint16),
                    "outlines": np.zeros_like(label), "filename": image.name, "est_diam": 20.0,
                    "flows": [np.zeros((3,) + label.shape, np.uint8)], "chan_choose": [0, 0]},
                    allow_pickle=True)
        elif i == 1:
            import cv2
            cv2.imwrite(str(dst / f"{image.stem}_masks.png"), label.astype(np.uint16))
        else:
            tifffile.imwrite(dst / f"{image.stem}_masks.tif", label.astype(np.uint16))
    return dst


def test_finetune_end_to_end_then_predict(tmp_path, challenge_set, run_script):
    proc = run_script(["finetune.py", "-i", challenge_set / "images", *FAST,
                       "--project", tmp_path / "runs", "--name", "ft"])
    weights = tmp_path / "runs" / "ft" / "finetuned.pt"
    assert weights.is_file()
    assert "F1 before" in proc.stdout and "-> after" in proc.stdout and "held-back" in proc.stdout
    ckpt = torch.load(weights, map_location="cpu", weights_only=True)
    assert ckpt["kind"] == "awf" and "finetune.py" in ckpt["note"] and ckpt["finetuned"] is True
    # the training images of the run: 3 trained on, 1 held back (MIN_VAL_PAIRS = 3)
    assert len(list((tmp_path / "runs" / "ft" / "data" / "train" / "images").iterdir())) == 3
    assert len(list((tmp_path / "runs" / "ft" / "data" / "val" / "images").iterdir())) == 1
    # then the refit: as many epochs on all 4, going on from the scored weights (kept)
    assert len(list((tmp_path / "runs" / "ft" / "data_all" / "train" / "images").iterdir())) == 4
    assert "then 1 epochs on all the images" in proc.stdout
    assert "then 1 epochs on all 4 images" in ckpt["note"]
    assert (tmp_path / "runs" / "ft" / "validated.pt").is_file()
    validated = load_checkpoint(tmp_path / "runs" / "ft" / "validated.pt")
    report = yaml.safe_load((tmp_path / "runs" / "ft" / "finetune.yaml").read_text())
    assert validated["opt"]["weights"] == report["start"] and validated["finetuned"] is True
    assert Path(ckpt["opt"]["weights"]).resolve() == (tmp_path / "runs" / "ft" / "validated.pt").resolve()
    # thresholds of the final weights tuned on all the images they trained on: reported, and
    # stored in finetuned.pt only
    assert "detection thresholds of the final weights on the training image(s)" in proc.stdout
    truth = [read_label(p) for p in sorted((challenge_set / "labels").iterdir())]
    assert report["tuning"]["trained"] and report["tuning"]["cells"] == sum(
        len(np.unique(t[t > 0])) for t in truth)
    assert ckpt["detection"] == report["tuning"]["settings"] and validated["detection"] == {}
    out = tmp_path / "pred"
    run_script(["predict.py", "-i", challenge_set / "images", "-o", out, "--ckpt", weights,
                "--device", "cpu"])
    labels = sorted(out.glob("*_label.tiff"))
    assert len(labels) == 4 and all(read_label(p).shape == (80, 80) for p in labels)


def test_cellpose_layout_is_read(tmp_path, challenge_set):
    folder = cellpose_copy(challenge_set, tmp_path / "cp")
    pairs = find_pairs(folder)
    assert [p[0].name for p in pairs] == sorted(p.name for p in (challenge_set / "images").iterdir())
    assert [p[1].name.split("_", 2)[-1] for p in pairs] == ["seg.npy", "masks.png", "masks.tif",
                                                            "masks.tif"]
    for image, label in pairs:
        truth = read_label(challenge_set / "labels" / f"{image.stem}_label.tiff")
        assert np.array_equal(read_user_label(label, truth.shape), truth)


def test_masks_beside_the_images_are_found_next_to_a_labels_folder(tmp_path, challenge_set):
    """Cellpose masks saved beside the images in X/images are found although X/labels exists
    (and holds only some of the labels); -l names the one folder to look in."""
    (tmp_path / "x" / "labels").mkdir(parents=True)
    folder = cellpose_copy(challenge_set, tmp_path / "x" / "images")
    first = sorted(p for p in folder.iterdir() if p.suffix != ".npy" and "_masks" not in p.name)[0]
    challenge_label = tmp_path / "x" / "labels" / f"{first.stem}_label.tiff"
    shutil.copy(challenge_set / "labels" / challenge_label.name, challenge_label)
    pairs = find_pairs(folder)
    assert len(pairs) == 4 and pairs[0][1] == challenge_label  # ../labels first
    assert all(p[1].parent == folder for p in pairs[1:])
    with pytest.raises(InputError, match="no label in"):
        find_pairs(folder, tmp_path / "x" / "labels")


def test_finetune_on_cellpose_layout_runs(tmp_path, challenge_set, run_script):
    folder = cellpose_copy(challenge_set, tmp_path / "cp")
    proc = run_script(["finetune.py", "-i", folder, *FAST, "--project", tmp_path / "runs",
                       "--no-refit", "--no-tune"])
    run = tmp_path / "runs" / "exp"
    assert (run / "finetuned.pt").is_file()
    # --no-refit: the held-back image is never trained on, one training only
    assert not (run / "validated.pt").exists() and not (run / "data_all").exists()
    assert "on all the images" not in proc.stdout
    # --no-tune: data/routing.yaml's thresholds
    assert "detection thresholds" not in proc.stdout
    assert load_checkpoint(run / "finetuned.pt")["detection"] == {}


def test_tuned_thresholds_are_stored_without_refit(tmp_path, challenge_set, monkeypatch):
    """--no-refit with a kept pair: finetuned.pt (the scored weights) carries it, and the loaded
    model applies it."""
    import utils.finetune as ft
    from models.loading import load_model

    monkeypatch.setattr(ft, "MIN_TUNE_CELLS", 0)
    monkeypatch.setattr(ft, "TUNE_MIN_GAIN", -1.0)   # any pair is kept
    r = ft.run_finetune(ft.FinetuneOptions(images=str(challenge_set / "images"), epochs=1, img=64,
                                           batch=2, workers=0, device="cpu", refit=False,
                                           project=str(tmp_path / "runs"), name="nt"))
    assert r.weights.name == "finetuned.pt" and not r.refit
    assert r.tuning.settings == r.tuning.best
    assert load_checkpoint(r.weights)["detection"] == r.tuning.best
    assert load_model(r.weights).detection == r.tuning.best


def test_mismatched_pair_is_refused_in_one_line(tmp_path, challenge_set, run_script):
    bad = shutil.copytree(challenge_set, tmp_path / "bad")
    name = sorted((bad / "images").iterdir())[1].stem
    write_label(bad / "labels" / f"{name}_label.tiff", np.ones((40, 50), np.int32))
    proc = run_script(["finetune.py", "-i", bad / "images", *FAST, "--project", tmp_path / "r"],
                      check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert name in last and "does not match" in last
    assert not (tmp_path / "r" / "exp" / "finetuned.pt").exists()


def test_unlabelled_image_is_refused_in_one_line(tmp_path, challenge_set, run_script):
    bad = shutil.copytree(challenge_set, tmp_path / "bad")
    name = sorted((bad / "images").iterdir())[0].stem
    (bad / "labels" / f"{name}_label.tiff").unlink()
    proc = run_script(["finetune.py", "-i", bad / "images", *FAST, "--project", tmp_path / "r"],
                      check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert name in last and "no label" in last


def test_label_files_are_not_taken_for_images(tmp_path, challenge_set):
    folder = cellpose_copy(challenge_set, tmp_path / "cp")
    (folder / "x_overlay.png").write_bytes((folder / sorted(os.listdir(folder))[0]).read_bytes())
    assert all(not p[0].stem.endswith(("_masks", "_overlay")) for p in find_pairs(folder))


def test_seg_npy_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    np.save(tmp_path / "a_seg.npy", np.array({"masks": Evil()}, dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="a_seg.npy"):
        read_seg_npy(tmp_path / "a_seg.npy")
    assert not marker.exists()


def test_split_pairs_holds_back_from_three():
    pairs = [(__import__("pathlib").Path(f"im{i}.png"), None) for i in range(10)]
    assert split_pairs(pairs[:2]) == (pairs[:2], [])
    train, held = split_pairs(pairs[:3])
    assert len(train) == 2 and len(held) == 1
    train, held = split_pairs(pairs)
    assert len(held) == 2 and not set(held) & set(train)
    train, held = split_pairs(pairs, val=["im4"])
    assert held == [pairs[4]] and len(train) == 9
    with pytest.raises(InputError, match="nope"):
        split_pairs(pairs, val=["nope"])
    # --no-val: every image trains, none held back; naming some to hold back contradicts it
    assert split_pairs(pairs, hold_back=False) == (pairs, [])
    with pytest.raises(InputError, match="im4"):
        split_pairs(pairs, val=["im4"], hold_back=False)


def test_prepared_dataset_keeps_the_chosen_channels_and_resizes_small_cells(tmp_path):
    """--chan 3 --chan2 1 on a 3-channel image: the training copy holds (blue, red) as read back
    by read_image; cells of ~7 px are enlarged as the size rule enlarges them at prediction."""
    from utils.finetune import prepare_dataset, resize_factor
    from utils.io import read_image, write_image
    from utils.sizing import round_factor

    label = np.zeros((60, 80), np.int32)
    for i, (y, x) in enumerate([(10, 10), (30, 40), (45, 65)], start=1):
        label[y - 3:y + 4, x - 3:x + 4] = i                          # 7 x 7 px cells
    img = np.stack([label * 10, label * 20, label * 30], axis=2).astype(np.uint8)
    (tmp_path / "in").mkdir()
    write_image(tmp_path / "in" / "a.tif", img)
    write_label(tmp_path / "in" / "a_label.tiff", label)
    factor = resize_factor([label])
    assert factor > 2.0 and factor == round_factor(factor)
    yaml_path = prepare_dataset([(tmp_path / "in" / "a.tif", tmp_path / "in" / "a_label.tiff")],
                                [], tmp_path / "ds", (3, 1), 1.0, epoch_size=16)
    raw = read_image(tmp_path / "ds" / "train" / "images" / "a.tif")
    assert raw.shape == (60, 80, 2)
    assert np.array_equal(raw[..., 0], img[..., 2]) and np.array_equal(raw[..., 1], img[..., 0])
    assert "epoch_size: 16" in yaml_path.read_text()
    prepare_dataset([(tmp_path / "in" / "a.tif", tmp_path / "in" / "a_label.tiff")], [],
                    tmp_path / "big", None, factor, epoch_size=16)
    big = read_label(tmp_path / "big" / "train" / "labels" / "a_label.tiff")
    assert big.shape == (round(60 * factor), round(80 * factor))
    assert set(np.unique(big)) == {0, 1, 2, 3}
    # the enlarged label sits on its enlarged cells: 0.1-0.33 px (7 px become 17 or 18), where
    # cv2's INTER_NEAREST puts them 0.76-0.80 px off
    big_raw = read_image(tmp_path / "big" / "train" / "images" / "a.tif")
    assert centroid_offsets(big, big_raw[..., 0]).mean() < 0.3


def test_weights_trained_on_resized_images_predict_at_that_scale(tmp_path):
    """finetune.py's input_scale travels in the checkpoint: prediction resizes by it instead of
    the size rule, and an explicit --scale still wins."""
    from utils.checkpoint import strip_checkpoint
    from utils.config import REPO_ROOT
    from utils.routing import Overrides, Router, load_routing

    ckpt = strip_checkpoint(REPO_ROOT / "ckpts" / "fl.pt", tmp_path / "ft.pt", input_scale=0.5)
    router = Router(load_routing(), torch.device("cpu"), ckpt=str(ckpt), amp="fp32")
    params = router.segmenter(ckpt, "fl").params
    assert params.scale == 0.5 and params.size_rule is None
    fixed = Router(load_routing(), torch.device("cpu"), Overrides(scale=1.5), ckpt=str(ckpt),
                   amp="fp32")
    assert fixed.segmenter(ckpt, "fl").params.scale == 1.5
    shipped = Router(load_routing(), torch.device("cpu"), amp="fp32", base_dir=REPO_ROOT)
    assert shipped.segmenter(REPO_ROOT / "ckpts" / "fl.pt", "fl").params.size_rule is not None


def test_finetuned_weights_at_native_scale_keep_the_size_rule_but_never_probe(tmp_path):
    """Weights finetuned on a user's images learnt their scale: the size rule's probe (a second
    pass enlarged when the first was unsure) is off for them, on for the shipped weights."""
    from utils.checkpoint import strip_checkpoint
    from utils.config import REPO_ROOT
    from utils.routing import Router, load_routing

    rule = load_routing().size_rule
    assert rule.probe_factor > 1.0
    ckpt = strip_checkpoint(REPO_ROOT / "ckpts" / "fl.pt", tmp_path / "ft.pt", finetuned=True)
    router = Router(load_routing(), torch.device("cpu"), ckpt=str(ckpt), amp="fp32")
    params = router.segmenter(ckpt, "fl").params
    assert params.scale == 1.0 and params.size_rule.probe_factor == 1.0
    assert params.size_rule.min_diameter == rule.min_diameter
    assert not params.size_rule.wants_probe(20.0, 0.1)
    plain = strip_checkpoint(REPO_ROOT / "ckpts" / "fl.pt", tmp_path / "plain.pt")
    other = Router(load_routing(), torch.device("cpu"), ckpt=str(plain), amp="fp32")
    assert other.segmenter(plain, "fl").params.size_rule == rule
    assert rule.wants_probe(20.0, 0.1)


def test_checkpoint_detection_settings_are_used_and_flags_still_win(tmp_path):
    """Thresholds tuned by finetune.py travel in the checkpoint: prediction uses them instead of
    data/routing.yaml's, a --conf-thres still wins, and a checkpoint cannot set other keys."""
    from utils.branch_settings import BranchSettings
    from utils.checkpoint import strip_checkpoint
    from utils.config import REPO_ROOT
    from utils.routing import Overrides, Router, load_routing

    shipped = REPO_ROOT / "ckpts" / "fl.pt"
    ckpt = strip_checkpoint(shipped, tmp_path / "ft.pt", input_scale=1.5,
                            detection={"conf_thres": 0.45, "iou_thres": 0.2})
    router = Router(load_routing(), torch.device("cpu"), ckpt=str(ckpt), amp="fp32")
    assert router.segmenter(ckpt, "fl").params.detection == BranchSettings(0.45, 0.2, 3000)
    flag = Router(load_routing(), torch.device("cpu"), Overrides(conf_thres=0.1), ckpt=str(ckpt),
                  amp="fp32")
    assert flag.segmenter(ckpt, "fl").params.detection == BranchSettings(0.1, 0.2, 3000)
    routed = Router(load_routing(), torch.device("cpu"), amp="fp32", base_dir=REPO_ROOT)
    assert routed.segmenter(shipped, "fl").params.detection == load_routing().detection["fl"]
    with pytest.raises(ValueError, match="max_det cannot be tuned"):
        strip_checkpoint(shipped, tmp_path / "bad.pt", detection={"max_det": 10})
    with pytest.raises(ValueError, match="conf_thres 1.5 is outside"):
        strip_checkpoint(shipped, tmp_path / "bad.pt", detection={"conf_thres": 1.5})


def test_tune_detection_scores_as_prediction_does_and_keeps_only_a_gain(tmp_path, challenge_set,
                                                                         monkeypatch):
    """The sweep's F1 at data/routing.yaml's pair is the F1 predict.py --ckpt scores (the
    checkpoint's resize included); the best pair is stored only past the cell and gain bars."""
    import utils.finetune as ft
    from utils.checkpoint import strip_checkpoint
    from utils.config import REPO_ROOT

    ckpt = strip_checkpoint(REPO_ROOT / "ckpts" / "fl.pt", tmp_path / "ft.pt", input_scale=1.5)
    pairs = find_pairs(challenge_set / "images")[:2]
    cpu = torch.device("cpu")
    monkeypatch.setattr(ft, "MIN_TUNE_CELLS", 0)
    monkeypatch.setattr(ft, "TUNE_MIN_GAIN", -1.0)
    tuning = ft.tune_detection(ckpt, pairs, None, cpu, "fp32")
    assert tuning.default_f1 == pytest.approx(np.mean(ft.score_checkpoint(ckpt, pairs, None, cpu,
                                                                          "fp32")), abs=1e-9)
    assert tuning.best_f1 >= tuning.default_f1 - 1e-9
    assert tuning.settings == tuning.best and tuning.best["conf_thres"] in ft.TUNE_CONFS
    truth = [read_label(lab) for _, lab in pairs]
    assert tuning.cells == sum(len(np.unique(t[t > 0])) for t in truth)
    monkeypatch.setattr(ft, "MIN_TUNE_CELLS", tuning.cells + 1)
    assert ft.tune_detection(ckpt, pairs, None, cpu, "fp32").settings == {}
    # a grid of the routing's own pair only: no gain, and data/routing.yaml's is kept
    monkeypatch.setattr(ft, "MIN_TUNE_CELLS", 0)
    monkeypatch.setattr(ft, "TUNE_MIN_GAIN", 0.01)
    monkeypatch.setattr(ft, "TUNE_CONFS", (tuning.routing["conf_thres"],))
    monkeypatch.setattr(ft, "TUNE_IOUS", (tuning.routing["iou_thres"],))
    tie = ft.tune_detection(ckpt, pairs, None, cpu, "fp32")
    assert tie.best == tuning.routing and tie.settings == {}
    assert tie.best_f1 == pytest.approx(tie.default_f1, abs=1e-9)


@pytest.mark.parametrize("n_images, refit, min_cells, swept", [
    (4, True, 0, ("finetuned.pt", 4, True)),     # after the refit, on every image
    (4, True, 10**6, ("validated.pt", 1, False)),  # too few cells: before it, on the held-back one
    (4, False, 0, ("finetuned.pt", 1, False)),   # --no-refit: the held-back image (never trained)
    (2, True, 0, ("finetuned.pt", 2, True)),     # nothing held back: the training images
    (2, True, 10**6, None)])                     # ... unless too few cells: no tuning
def test_the_final_weights_are_tuned_on_enough_cells(tmp_path, challenge_set, monkeypatch,
                                                     n_images, refit, min_cells, swept):
    import utils.finetune as ft
    images = tmp_path / "in"
    images.mkdir()
    for image in sorted((challenge_set / "images").iterdir())[:n_images]:
        shutil.copy(image, images / image.name)
        shutil.copy(challenge_set / "labels" / f"{image.stem}_label.tiff", images)
    calls, real = [], ft.tune_detection

    def record(ckpt, pairs, *args, **kwargs):
        calls.append((Path(ckpt).name, len(pairs), kwargs.get("trained", False)))
        return real(ckpt, pairs, *args, **kwargs)

    monkeypatch.setattr(ft, "tune_detection", record)
    monkeypatch.setattr(ft, "MIN_TRAINED_TUNE_CELLS", min_cells)
    monkeypatch.setattr(ft, "MIN_TUNE_CELLS", 0)
    monkeypatch.setattr(ft, "TUNE_MIN_GAIN", -1.0)   # any pair is stored
    r = ft.run_finetune(ft.FinetuneOptions(images=str(images), epochs=1, img=64, batch=2,
                                           workers=0, device="cpu", refit=refit,
                                           project=str(tmp_path / "runs")))
    assert calls == ([swept] if swept else [])
    assert r.weights.name == "finetuned.pt"
    stored = load_checkpoint(r.weights)["detection"]
    assert stored == (r.tuning.best if swept else {})  # finetuned.pt carries the pair
    if swept:
        assert r.tuning.trained == swept[2]


@pytest.mark.parametrize("minutes", [3.0, 0.0])
def test_refit_gets_the_rest_of_the_minutes(tmp_path, challenge_set, monkeypatch, minutes):
    """With --minutes, the scored training gets half the budget and the refit all that is left
    (not the first one's epoch count, which left a 10-minute run done in 8.3); without, the
    budget is default_minutes's for this CPU."""
    import utils.finetune as ft
    budget = minutes or ft.default_minutes("cpu", "auto")

    calls, real = [], ft._train

    def one_epoch(opt, data_yaml, start, run_dir, name, epochs, minutes):
        calls.append((name, epochs, minutes))
        return real(opt, data_yaml, start, run_dir, name, 1, 0.0)  # a fast stand-in

    monkeypatch.setattr(ft, "_train", one_epoch)
    monkeypatch.setattr(ft, "TUNE_COST_RATIO", 0.0)  # no time kept for the threshold sweep
    r = ft.run_finetune(ft.FinetuneOptions(images=str(challenge_set / "images"), minutes=minutes,
                                           img=64, batch=2, workers=0, device="cpu",
                                           project=str(tmp_path / "runs"), name="rest"))
    (first, e1, m1), (second, e2, m2) = calls
    assert (first, second, e1, e2) == ("train", "train_all", 0, 0)
    assert 1.0 < m1 <= (budget - ft.SCORING_RESERVE_MIN) / 2
    assert m1 < m2 <= budget - ft.WRITE_RESERVE_MIN
    assert r.refit and (r.epochs, r.refit_epochs) == (1, 1)
    # the threshold sweep's minutes come out of both trainings' budgets (at least half a minute)
    calls.clear()
    monkeypatch.setattr(ft, "TUNE_COST_RATIO", 1e6)
    ft.run_finetune(ft.FinetuneOptions(images=str(challenge_set / "images"), minutes=minutes,
                                       img=64, batch=2, workers=0, device="cpu",
                                       project=str(tmp_path / "runs"), name="rest"))
    assert [m for _, _, m in calls] == [0.25, 0.5]


def test_default_minutes_are_longer_where_a_cpu_trains_in_fp32():
    """No --minutes: 15 on a CPU without native bf16 (or --amp fp32), 10 with bf16 or CUDA."""
    from utils.finetune import default_minutes

    def yes():
        return True, "stub"

    def no():
        return False, "stub"
    assert default_minutes("cpu", "auto", no) == 15.0 and default_minutes("cpu", "auto", yes) == 10.0
    assert default_minutes("cpu", "fp32", yes) == 15.0 and default_minutes("cpu", "bf16", no) == 10.0
    assert default_minutes("cuda", "auto", no) == 10.0
