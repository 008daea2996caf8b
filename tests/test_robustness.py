"""Bad inputs, bad paths and kills (issue #14): one clear line each, and no finished work lost.

Every bad file is made on the fly; none of these tests needs the real data.
"""
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from utils.checkpoint import CheckpointError, save_checkpoint_atomic
from utils.io import read_label, remove_stale_temporaries, write_label, write_table
from utils.inference import Segmentation
from utils.routing import Router, load_routing
from utils.datasplits import read_confidence
from utils import predict_folder
from utils.predict_folder import RECORD_FIELDS, PredictionRecord, RecordLog, predict_files

RNG = np.random.default_rng(0)


def _good(shape=(64, 64, 3)):
    return RNG.integers(0, 255, shape).astype(np.uint8)


def _no_traceback(proc):
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]


def _mixed_folder(folder: Path) -> tuple[list[str], list[str]]:
    """3 good images, 4 odd but usable ones and 11 bad ones: (usable stems, bad stems)."""
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"good{i}.png"), _good())
    img = _good((64, 64))
    usable = ["good0", "good1", "good2"]
    cv2.imwrite(str(folder / "tall_6000x300.png"), _good((6000, 300)))
    tifffile.imwrite(folder / "pages3_no_axes.tif", np.stack([img] * 3), photometric="minisblack")
    tifffile.imwrite(folder / "tiny_2x2.tif", img[:2, :2])
    tifffile.imwrite(folder / "int16_negative.tif", img.astype(np.int16) - 100)
    usable += ["tall_6000x300", "pages3_no_axes", "tiny_2x2", "int16_negative"]
    tifffile.imwrite(folder / "c64.tif", img.astype(np.complex64))
    (folder / "zero_bytes.png").write_bytes(b"")
    (folder / "text_as.tif").write_text("this is a text file, not a TIFF\n" * 20)
    tifffile.imwrite(folder / "truncated.tif", _good((200, 200, 3)))
    (folder / "truncated.tif").write_bytes((folder / "truncated.tif").read_bytes()[:400])
    tifffile.imwrite(folder / "all_nan.tif", np.full((32, 32), np.nan, np.float32))
    cv2.imwrite(str(folder / "one_pixel.png"), img[:1, :1])
    tifffile.imwrite(folder / "one_row.tif", img[:1])
    tifffile.imwrite(folder / "five_channels.tif", np.stack([img] * 5, axis=-1))
    tifffile.imwrite(folder / "zstack.tif", np.stack([img] * 3), imagej=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(folder / "stack12.tif", np.stack([img] * 12))
    cv2.imwrite(str(folder / "good0.jpg"), _good())  # same stem as good0.png
    bad = ["c64", "zero_bytes", "text_as", "truncated", "all_nan", "one_pixel", "one_row",
           "five_channels", "zstack", "stack12", "good0.jpg"]
    return usable, bad


def test_mixed_folder_runs_to_the_end(tmp_path, trained_ckpt, run_script):
    usable, bad = _mixed_folder(tmp_path / "in")
    out = tmp_path / "out"
    proc = run_script(["predict.py", "-i", tmp_path / "in", "-o", out, "--ckpt", trained_ckpt,
                       "--device", "cpu", "--conf-thres", "0.001"], check=False)
    _no_traceback(proc)
    assert proc.returncode == 1
    for stem in usable:
        assert read_label(out / f"{stem}_label.tiff").ndim == 2
    records = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert list(records.columns) == RECORD_FIELDS
    assert len(records) == len(usable) + len(bad)  # every file, once
    ok = records[records.status == "ok"]
    assert sorted(ok.name) == sorted(usable) and (ok.error == "").all()
    failed = records[records.status == "failed"]
    assert len(failed) == len(bad) and (failed.error != "").all()
    for name in bad:
        file = next(p.name for p in (tmp_path / "in").iterdir() if name in (p.stem, p.name))
        lines = [ln for ln in proc.stderr.splitlines() if "ERROR" in ln and file in ln]
        assert lines, f"no error line names {file}"
    assert not list(out.glob(".*tmp*"))


def test_any_exception_of_one_file_fails_that_file_only(tmp_path):
    class Flaky:
        def route_and_segment(self, raw, image):
            if image.shape[0] == 40:
                raise KeyError("something nobody expected")
            return Segmentation(np.ones(image.shape[:2], np.int32), modality="bf", branch="x")

    for name, h in (("a", 32), ("b", 40), ("c", 32)):
        cv2.imwrite(str(tmp_path / f"{name}.png"), _good((h, 32, 3)))
    files = sorted(tmp_path.glob("*.png"))
    summary, _ = predict_files(files, Flaky(), tmp_path / "out", progress=False,
                               records_csv=tmp_path / "out" / "predictions.csv")
    assert [r.name for r in summary.records] == ["a", "c"]
    assert len(summary.failures) == 1 and "b.png: KeyError" in summary.failures[0]
    rows = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False)
    assert list(rows.status) == ["ok", "failed", "ok"]


class _Counting:
    """A stand-in router: one cell per image, counts its calls."""

    def __init__(self, stop_after=None):
        self.calls, self.stop_after = [], stop_after

    def route_and_segment(self, raw, image):
        if self.stop_after is not None and len(self.calls) == self.stop_after:
            raise KeyboardInterrupt  # as a kill would, mid-run
        self.calls.append(image.shape)
        label = np.zeros(image.shape[:2], np.int32)
        label[2:6, 2:6] = 1
        return Segmentation(label, modality="fl", branch="x", n_cells=1, fg_conf=0.9)


def test_records_are_written_as_each_image_finishes_and_skip_existing(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for i in range(6):
        cv2.imwrite(str(inp / f"im{i}.png"), _good((32, 32, 3)))
    files = sorted(inp.glob("*.png"))
    csv_path = out / "confidence.csv"
    with pytest.raises(KeyboardInterrupt):
        predict_files(files, _Counting(stop_after=3), out, progress=False, pseudo=True,
                      records_csv=csv_path)
    assert list(pd.read_csv(csv_path).name) == ["im0", "im1", "im2"]  # kept although interrupted
    with open(csv_path, "a") as fh:  # a kill in the middle of a row
        fh.write("im3,fl,x,1,0.9")
    (out / "im1_label.tiff").unlink()  # and a label that went missing
    router = _Counting()
    summary, _ = predict_files(files, router, out, progress=False, pseudo=True,
                               records_csv=csv_path, skip_existing=True)
    assert len(router.calls) == 4 and summary.skipped == 2  # im1, im3, im4, im5 only
    rows = pd.read_csv(csv_path)
    assert sorted(rows.name) == [f"im{i}" for i in range(6)]  # none lost, none duplicated
    assert (rows.status == "ok").all()
    # without --skip-existing a rerun starts the records afresh
    predict_files(files, _Counting(), out, progress=False, records_csv=csv_path)
    assert sorted(pd.read_csv(csv_path).name) == [f"im{i}" for i in range(6)]


def test_failed_rows_do_not_become_pseudo_samples(tmp_path):
    log = RecordLog(tmp_path / "confidence.csv")
    log.append(PredictionRecord(name="a", confidence=0.8, image="a.png", label_path="x"))
    log.append(PredictionRecord(name="b", image="b.png", status="failed", error="bad, really"))
    log.close()
    assert read_confidence(tmp_path / "confidence.csv") == {"a": 0.8}


def test_stale_temporaries_are_removed_on_start(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".im0_label.k2j_x9q1.tmp.tiff"
    stale.write_bytes(b"half a label")
    keep = out / ".hidden_but_mine.txt"
    keep.write_text("x")
    old = predict_folder._STARTED - 60  # written before this process started: a killed run's
    os.utime(stale, (old, old))
    cv2.imwrite(str(tmp_path / "im0.png"), _good((32, 32, 3)))
    predict_files([tmp_path / "im0.png"], _Counting(), out, progress=False)
    assert not stale.exists() and keep.exists()
    fresh = out / ".last.abcdefgh.tmp.pt"  # another process's file being written now
    fresh.write_bytes(b"x")
    assert remove_stale_temporaries(out, time.time() - 30) == 0 and fresh.exists()


def test_empty_input_folder_is_an_error_unless_allowed(tmp_path, trained_ckpt, run_script):
    (tmp_path / "empty").mkdir()
    args = ["predict.py", "-i", tmp_path / "empty", "-o", tmp_path / "out", "--ckpt", trained_ckpt,
            "--device", "cpu"]
    proc = run_script(args, check=False)
    assert proc.returncode == 2 and "no image" in proc.stderr and "--allow-empty" in proc.stderr
    assert run_script([*args, "--allow-empty"], check=False).returncode == 0


def test_bad_output_paths_fail_before_the_work(tmp_path, trained_ckpt, synthetic_data, run_script):
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("not a folder")
    a_folder = tmp_path / "a_folder"
    a_folder.mkdir()
    images = synthetic_data.parent / "set"
    cases = [
        (["predict.py", "-i", images / "images", "-o", a_file, "--ckpt", trained_ckpt,
          "--device", "cpu"], a_file),
        (["evaluate.py", "-i", images, "-o", a_folder, "--ckpt", trained_ckpt, "--device", "cpu"],
         a_folder),
        (["compute_metric.py", "-g", images / "labels", "-s", images / "labels",
          "--gt_suffix", "_label.tiff", "-o", a_file], a_file),
    ]
    for args, named in cases:
        proc = run_script(args, check=False)
        _no_traceback(proc)
        assert proc.returncode == 2, (args[0], proc.stderr[-2000:])
        errors = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
        assert len(errors) == 1 and str(named) in errors[0], proc.stderr[-2000:]
        assert "%|" not in proc.stderr  # no progress bar: nothing was predicted or scored
    assert a_file.read_text() == "not a folder"


def test_write_table_keeps_the_results_when_the_path_fails(tmp_path, caplog):
    target = tmp_path / "results.csv"
    target.mkdir()  # became a folder while the work ran
    frame = pd.DataFrame({"names": ["a", "b"], "F1": [0.5, 1.0]})
    with caplog.at_level("ERROR"):
        written = write_table(frame, target)
    assert written != target and written.is_file()
    pd.testing.assert_frame_equal(pd.read_csv(written), frame)
    assert str(written) in caplog.text
    written.unlink()


def test_a_corrupt_ckpt_is_one_line_before_any_image(tmp_path, trained_ckpt, synthetic_data, run_script):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(trained_ckpt.read_bytes()[:20000])
    proc = run_script(["predict.py", "-i", synthetic_data.parent / "set" / "images", "-o", tmp_path / "o",
                       "--ckpt", bad, "--device", "cpu"], check=False)
    _no_traceback(proc)
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if "ERROR" in ln]
    assert len(errors) == 1 and "bad.pt" in errors[0], proc.stderr[-2000:]
    assert not (tmp_path / "o" / "predictions.csv").exists()


def test_router_loads_every_branch_checkpoint_up_front(tmp_path):
    from models.awf import AWF, AWFConfig
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    model = AWF(AWFConfig())
    save_checkpoint_atomic({"kind": "awf", "model": model.state_dict(),
                            "model_config": model.config_dict()}, ckpts / "general.pt")
    torch.save({"kind": "awf", "model": {"not": torch.zeros(1)}}, ckpts / "fl.pt")  # wrong weights
    router = Router(load_routing(ckpt_dir="ckpts"), torch.device("cpu"), base_dir=tmp_path)
    with pytest.raises(CheckpointError) as err:
        router.check_checkpoints()
    assert "fl.pt" in str(err.value) and "\n" not in str(err.value)


def _label(ids, n=4, size=48):
    lab = np.zeros((size, size), np.int32)
    for i in range(ids):
        lab[5 + 10 * (i // 2):12 + 10 * (i // 2), 5 + 20 * (i % 2):15 + 20 * (i % 2)] = i + 1
    return lab


def test_compute_metric_names_ground_truth_without_prediction(tmp_path, run_script):
    gt, seg = tmp_path / "gt", tmp_path / "seg"
    for i in range(5):
        write_label(gt / f"im{i}_label.tiff", _label(4))
    for i in range(3):
        write_label(seg / f"im{i}_label.tiff", _label(4))  # perfect: F1 1
    write_label(seg / "im3_label.tiff", np.zeros((48, 48), np.int32))  # F1 0; im4 has no prediction
    base = ["compute_metric.py", "-g", gt, "-s", seg, "--gt_suffix", "_label.tiff", "-o", tmp_path]
    proc = run_script([*base, "-n", "parity"])
    assert "mean F1 Score: 0.7500" in proc.stdout
    assert "1 ground-truth file(s) have no prediction" in proc.stderr and "im4_label.tiff" in proc.stderr
    assert len(pd.read_csv(tmp_path / "parity-0.5.csv")) == 4  # the challenge's CSV, unchanged
    proc = run_script([*base, "-n", "zero", "--missing_as_zero"])
    assert "mean F1 Score: 0.6000" in proc.stdout
    frame = pd.read_csv(tmp_path / "zero-0.5.csv")
    assert len(frame) == 5 and frame.set_index("names").loc["im4_label.tiff", "F1"] == 0
