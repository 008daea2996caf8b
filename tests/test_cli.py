"""Issue 24's command line: inputs (an image, a glob, a list file, --recursive, --filter),
--diameter, --modality, --chan/--chan2, --version, -q, overlays, help texts and the set-up check.

Images are generated (utils.synthetic, 48-64 px); models: the shipped ckpts/general.pt (or the
routing over ckpts/ for --modality), run in-process where the output is a file.
"""
import argparse
import subprocess
import sys
import tomllib

import cv2
import numpy as np
import pandas as pd
import pytest
from skimage.segmentation import find_boundaries

import evaluate
import predict
from tests.conftest import REPO
from utils import setup_check
from utils.inference import Segmentation
from utils.io import InputError, find_images, read_label, write_image, write_label
from utils.modality import classify_modality
from utils.plots import label_colors, overlay_outlines
from utils.predictor import Predictor
from utils.predict_folder import input_files, predict_files
from utils.sizing import DIAMETER_TARGET
from utils.synthetic import make_sample

GENERAL = str(REPO / "ckpts" / "general.pt")
CPU = ["--ckpt", GENERAL, "--device", "cpu", "--amp", "fp32"]


def _fl(seed: int, size=(48, 48)) -> np.ndarray:
    """A synthetic single-channel uint8 fluorescence image ``(H, W)``."""
    return make_sample("fl", size, seed=seed, channels=1, dtype="uint8", size_range=(8, 16))[0]


def _touch(*paths):
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), np.zeros((8, 8), np.uint8))
    return paths


# ----------------------------------------------------------------------------- inputs (library)
def test_find_images_takes_a_file_a_glob_a_list_file_and_a_filter(tmp_path):
    a1, b2, b_other = _touch(tmp_path / "a" / "img_1.png", tmp_path / "b" / "img_2.png",
                             tmp_path / "b" / "other.png")
    (tmp_path / "b" / "notes.txt.bak").write_text("x")
    assert find_images(a1) == [a1]
    assert find_images(str(tmp_path / "*" / "img_*.png")) == [a1, b2]
    assert find_images(str(tmp_path / "**" / "*.png")) == [a1, b2, b_other]
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "some.txt").write_text(f"# chosen by hand\n\n../b/other.png\n  ../a/img_1.png  \n{b2}\n")
    assert find_images(lists / "some.txt") == [b_other, a1, b2]  # in the list's order
    (lists / "bad.txt").write_text("../a/img_1.png\n../a/missing.png\n")
    with pytest.raises(InputError, match=r"bad.txt: line 2: \.\./a/missing.png: no such file"):
        find_images(lists / "bad.txt")
    c0, c1, t0 = _touch(tmp_path / "f" / "x_c0.png", tmp_path / "f" / "x_c1.png",
                        tmp_path / "f" / "y_c0.tif")
    assert find_images(tmp_path / "f", name_filter="_c0") == [c0, t0]
    assert find_images(str(tmp_path / "f" / "*"), name_filter="_c1") == [c1]
    with pytest.raises(InputError, match="no such file or folder"):
        find_images(tmp_path / "nowhere")
    with pytest.raises(InputError, match="not an image"):
        find_images(tmp_path / "b" / "notes.txt.bak")
    with pytest.raises(InputError, match="--recursive needs a folder"):
        input_files(str(tmp_path / "*" / "img_*.png"), recursive=True)


class _OneCell:
    """A stand-in router: the 4x4 cell at (2, 2) of every image."""

    def route_and_segment(self, raw, image):
        label = np.zeros(image.shape[:2], np.int32)
        label[2:6, 2:6] = 1
        return Segmentation(label, modality="fl", branch="x", n_cells=1)


def test_recursive_outputs_mirror_the_subfolders_and_same_names_never_overwrite(tmp_path):
    root = tmp_path / "plate"
    top, deep, other, _ = _touch(root / "x.png", root / "sub" / "deeper" / "x.png",
                                 root / "sub" / "y.png", root / ".hidden" / "z.png")
    assert input_files(root) == [top]
    files = input_files(root, recursive=True)
    assert files == [deep, other, top]  # sorted by path; hidden folders skipped
    out = tmp_path / "out"
    summary, _ = predict_files(files, _OneCell(), out, progress=False, root=root,
                               records_csv=out / "predictions.csv")
    assert not summary.failures
    for name in ("x", "sub/deeper/x", "sub/y"):
        assert read_label(out / f"{name}_label.tiff")[3, 3] == 1
    rows = pd.read_csv(out / "predictions.csv")
    assert sorted(rows.name) == ["sub/deeper/x", "sub/y", "x"]
    assert sorted(rows.label_path) == ["sub/deeper/x_label.tiff", "sub/y_label.tiff", "x_label.tiff"]
    # flat outputs (a glob or list over several folders): the second x fails, nothing overwritten
    summary, _ = predict_files([top, deep], _OneCell(), tmp_path / "flat", progress=False)
    assert len(summary.records) == 1 and len(summary.failures) == 1
    assert "same name as" in summary.failures[0] and str(deep) in summary.failures[0]


# ----------------------------------------------------------------------------- predict.py end to end
def test_predict_takes_one_image_a_recursive_filtered_folder_and_a_diameter(tmp_path):
    root = tmp_path / "in"
    (root / "well").mkdir(parents=True)
    for i, rel in enumerate(("a_c0.png", "a_c1.png", "well/b_c0.png")):
        write_image(root / rel, _fl(i))
    out = tmp_path / "one"
    assert predict.main(["-i", str(root / "a_c0.png"), "-o", str(out), *CPU]) == 0
    assert read_label(out / "a_c0_label.tiff").shape == (48, 48)
    assert list(pd.read_csv(out / "predictions.csv").name) == ["a_c0"]
    out = tmp_path / "all"
    assert predict.main(["-i", str(root), "-o", str(out), "--recursive", "--filter", "_c0",
                         "--diameter", "25", *CPU]) == 0
    rows = pd.read_csv(out / "predictions.csv").set_index("name")
    assert sorted(rows.index) == ["a_c0", "well/b_c0"]
    assert (out / "well" / "b_c0_label.tiff").is_file() and not (out / "a_c1_label.tiff").exists()
    assert (rows.scale == DIAMETER_TARGET / 25).all()  # resized once by target / diameter


def test_diameter_sets_the_one_resize_factor_and_excludes_scale():
    predictor = Predictor.from_config(ckpt=GENERAL, device="cpu", diameter=DIAMETER_TARGET / 2)
    result = predictor.segment(_fl(3, (64, 64)))
    assert result.scale == 2.0 and result.label.shape == (64, 64)
    assert predictor.router.overrides.fixed_scale() == 2.0   # fixed: no size-rule second pass
    assert Predictor.from_config(ckpt=GENERAL, device="cpu").router.overrides.fixed_scale() is None
    with pytest.raises(ValueError, match="give one of the two"):
        Predictor.from_config(ckpt=GENERAL, scale=2.0, diameter=30)
    with pytest.raises(SystemExit):  # argparse: --scale and --diameter exclude each other
        predict.parse_args(["-i", "a", "-o", "b", "--scale", "2", "--diameter", "30"])


def test_modality_forces_the_branch_for_every_image(tmp_path):
    image = _fl(4, (64, 64))
    assert classify_modality(image[..., None]) == "fl"   # the classifier's answer ...
    write_image(tmp_path / "in" / "cells.png", image)
    assert predict.main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                         "--modality", "gs", "--device", "cpu", "--amp", "fp32"]) == 0
    row = pd.read_csv(tmp_path / "out" / "predictions.csv").iloc[0]
    assert row.modality == "gs" and row.branch == "grayscale"   # ... overridden: gs's checkpoint
    with pytest.raises(SystemExit):
        predict.parse_args(["-i", "a", "-o", "b", "--modality", "dic"])


# ----------------------------------------------------------------------------- channels
@pytest.fixture(scope="module")
def general():
    return Predictor.from_config(ckpt=GENERAL, device="cpu", amp="fp32")


def test_chan_and_chan2_pick_cellpose_channels(general):
    red, green, blue = _fl(10, (64, 64)), _fl(11, (64, 64)), _fl(12, (64, 64))
    rgb = np.stack([red, green, blue], axis=-1)
    router = general.router
    label = {ch: Predictor(router, ch).segment(rgb).label for ch in ((1, 0), (2, 0), (2, 3))}
    assert np.array_equal(label[(2, 0)], general.segment(green).label)   # green alone
    assert np.array_equal(label[(2, 3)], general.segment(np.stack([green, blue], -1)).label)
    assert not np.array_equal(label[(1, 0)], label[(2, 0)])              # another channel
    grey = Predictor(router, (0, 0)).segment(rgb).label
    mean = rgb.astype(np.float32).mean(axis=2)
    assert np.array_equal(grey, general.segment(mean).label)
    with pytest.raises(InputError, match="--chan 3: the image has 1 channel"):
        Predictor(router, (3, 0)).segment(green)
    with pytest.raises(ValueError, match="--chan2 2 needs --chan"):
        Predictor.from_config(ckpt=GENERAL, chan2=2)


def test_a_missing_channel_fails_that_image_only(tmp_path):
    inp = tmp_path / "in"
    write_image(inp / "grey.png", _fl(5))
    write_image(inp / "rgb.png", np.stack([_fl(6), _fl(7), _fl(8)], axis=-1))
    assert predict.main(["-i", str(inp), "-o", str(tmp_path / "out"), "--chan", "3", *CPU]) == 1
    rows = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False).set_index("name")
    assert rows.loc["rgb", "status"] == "ok" and rows.loc["grey", "status"] == "failed"
    assert rows.loc["grey", "error"] == "--chan 3: the image has 1 channel(s)"


def test_evaluate_reads_the_channels_asked_for(tmp_path):
    labelled = tmp_path / "set"
    image, label = make_sample("fl", (64, 64), seed=2, channels=1, dtype="uint8",
                               size_range=(8, 16))
    empty = np.zeros_like(image)
    write_image(labelled / "images" / "two.png", np.stack([empty, image, empty], -1))
    write_label(labelled / "labels" / "two_label.tiff", label)
    common = ["-i", str(labelled), *CPU, "-q"]
    assert evaluate.main([*common, "-o", str(tmp_path / "c2.csv"), "--chan", "2"]) == 0
    assert pd.read_csv(tmp_path / "c2.csv")["F1"].iloc[0] > 0.3   # the cells' channel
    assert evaluate.main([*common, "-o", str(tmp_path / "c1.csv"), "--chan", "1"]) == 0
    assert pd.read_csv(tmp_path / "c1.csv")["pred_num"].iloc[0] == 0   # the empty red
    assert evaluate.main([*common, "-o", str(tmp_path / "c4.csv"), "--chan", "4"]) == 1


# ----------------------------------------------------------------------------- --version, -q
def test_version_on_both_scripts_and_its_fallback(monkeypatch):
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for script in ("predict.py", "evaluate.py"):
        out = subprocess.run([sys.executable, script, "--version"], cwd=REPO, check=True,
                             capture_output=True, text=True).stdout
        assert out.strip() == f"{script} {version}"

    def not_installed(name):
        raise setup_check.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(setup_check.metadata, "version", not_installed)
    assert setup_check.package_version() == version   # read from pyproject.toml


def test_quiet_leaves_warnings_only(tmp_path, run_script):
    write_image(tmp_path / "in" / "cells.png", _fl(9))
    loud, quiet = (run_script(["predict.py", "-i", tmp_path / "in", "-o", tmp_path / name, *CPU,
                               *flags]).stderr for name, flags in (("a", []), ("b", ["-q"])))
    assert " INFO " in loud and "predict: 100%" in loud   # information lines and the progress bar
    assert " INFO " not in quiet and "predict:" not in quiet and "img/s" not in quiet, quiet


# ----------------------------------------------------------------------------- overlays
def _three_cells():
    label = np.zeros((40, 40), np.int32)
    label[5:15, 5:15], label[5:15, 15:25], label[22:35, 8:30] = 1, 2, 7   # 1 and 2 touch
    return label


def test_overlay_outlines_each_cell_in_its_own_colour_on_the_unaltered_image():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 40, 3)).astype(np.uint8)
    label = _three_cells()
    out = overlay_outlines(image, label)
    edge = np.any(out != image, axis=2)
    assert edge.any() and not edge[label == 0].any()                   # outlines on cells only
    inner = find_boundaries(label, mode="inner")                       # each cell's outline
    assert np.array_equal(out[~inner], image[~inner])                  # pixel values kept off them
    colours = {}
    for i in (1, 2, 7):
        drawn = np.unique(out[(label == i) & inner], axis=0)
        assert len(drawn) == 1, i                                      # one colour per cell
        colours[i] = tuple(drawn[0])
    assert len(set(colours.values())) == 3                             # all different
    assert colours[1] == tuple(label_colors([1])[0])
    grey16 = (rng.integers(0, 4000, (40, 40)) + 30000).astype(np.uint16)
    shown = overlay_outlines(grey16, label)
    assert shown.dtype == np.uint8 and shown.shape == (40, 40, 3) and shown[label == 0].max() == 255
    grey8 = image[..., 0]
    assert np.array_equal(overlay_outlines(grey8, label)[~inner], np.repeat(grey8[..., None], 3, 2)[~inner])


def test_predict_overlay_is_drawn_on_the_pixels_as_read(tmp_path):
    image = (np.random.default_rng(1).integers(100, 140, (32, 32, 3))).astype(np.uint8)
    write_image(tmp_path / "low_contrast.png", image)
    predict_files([tmp_path / "low_contrast.png"], _OneCell(), tmp_path / "out",
                  save_overlay=True, progress=False)
    overlay = cv2.imread(str(tmp_path / "out" / "low_contrast_overlay.png"))[..., ::-1]
    off = np.ones((32, 32), bool)
    off[2:6, 2:6] = False
    assert np.array_equal(overlay[off], image[off])   # not the network's stretched image


# ----------------------------------------------------------------------------- help texts
def _help(parse, capsys) -> str:
    with pytest.raises(SystemExit):
        parse(["--help"])
    return capsys.readouterr().out


def test_help_has_no_empty_defaults_and_shows_the_per_modality_thresholds(capsys):
    from utils.cli import training_parser
    from utils.routing import load_routing
    texts = {"predict": _help(predict.parse_args, capsys),
             "evaluate": _help(evaluate.parse_args, capsys),
             "train": training_parser("t", hyp="h.yaml").format_help()}
    for name, text in texts.items():
        assert "(default: None)" not in text and "(default: )" not in text, name
    cfg = load_routing()
    for text in (texts["predict"], texts["evaluate"]):
        flat = " ".join(text[text.index("options:"):].split())   # past the usage lines
        conf = flat[flat.index("--conf-thres CONF_THRES"):flat.index("--iou-thres IOU_THRES")]
        for m in ("bf", "fl", "gs"):
            assert f"{m} {cfg.inference_params(m).detection.conf_thres:g}" in conf
        device = flat[flat.index("--device DEVICE"):flat.index("--conf-thres CONF_THRES")]
        assert "first CUDA GPU, else the CPU" in device
        assert "--amp {auto,fp32,bf16,fp16,off}" in text
    assert predict.parse_args(["-i", "a", "-o", "b", "--amp", "off"]).amp == "off"


def test_prediction_flags_are_the_predictor_keywords():
    from utils.cli import add_prediction_args, prediction_kwargs
    from utils.predictor import prediction_defaults
    args = add_prediction_args(argparse.ArgumentParser()).parse_args(
        ["--conf-thres", "0.2", "--diameter", "30", "--modality", "bf", "--chan", "2"])
    kwargs = prediction_kwargs(args)
    assert set(kwargs) == set(prediction_defaults()) >= {
        "ckpt", "routing", "device", "conf_thres", "iou_thres", "max_det", "tta", "scale",
        "diameter", "modality", "chan", "chan2", "amp"}
    assert kwargs == {**prediction_defaults(), "conf_thres": 0.2, "diameter": 30.0,
                      "modality": "bf", "chan": 2}


# ----------------------------------------------------------------------------- set-up check
def test_setup_check_names_both_versions_and_the_fix(monkeypatch):
    import builtins
    import torch
    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name.startswith("torchvision"):
            raise RuntimeError("operator torchvision::nms does not exist")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", broken)
    with pytest.raises(setup_check.SetupError) as err:
        setup_check.check_torch_install()
    line = str(err.value)
    torch_version = torch.__version__.split("+")[0]
    vision = setup_check.metadata.version("torchvision")
    assert "\n" not in line and "torchvision::nms does not exist" in line
    assert f"torch {torch_version} and torchvision {vision}" in line
    assert f"pip install torch=={torch_version} torchvision==0.{int(torch_version.split('.')[1]) + 15}.*" in line
    assert setup_check.matching_torchvision("2.14.1+cu121") == "torchvision==0.29.*"


@pytest.mark.parametrize("script", ["predict.py", "evaluate.py", "train_main.py"])
def test_scripts_end_in_one_line_when_torchvision_does_not_match(tmp_path, script, run_script):
    fake = tmp_path / "site" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        'raise RuntimeError("operator torchvision::nms does not exist")\n')
    args = {"predict.py": ["-i", REPO / "examples", "-o", tmp_path / "out"],
            "evaluate.py": ["-i", tmp_path, "-o", tmp_path / "e.csv"],
            "train_main.py": ["--epochs", "1"]}[script]
    proc = run_script([script, *args], check=False,
                      env_extra={"PYTHONPATH": f"{fake.parent}:{REPO}"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if "ERROR" in ln]
    assert len(errors) == 1 and "pip install torch==" in errors[0], proc.stderr[-3000:]


def test_setup_check_command_prints_ok(run_script):
    out = run_script(["-m", "utils.setup_check"]).stdout
    assert out.strip().endswith(": OK") and "torchvision" in out
