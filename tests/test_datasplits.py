"""Split resolution (utils.datasplits) and the modality memo (utils.modality_cache)."""
from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest

import utils.modality_cache as mcache
from tests.conftest import DATASET_IMAGES as N, cfg_for
from utils import io as uio
from utils.datasplits import resolve_split


def test_resolve_folder_pairs_and_meta_modality(data_root):
    samples = resolve_split(cfg_for(data_root, train=["."]), "train")
    assert len(samples) == N
    assert [s.modality for s in samples[:3]] == ["fl", "bf", "gs"]
    for s in samples:
        assert s.label == data_root / "labels" / f"{s.image.stem}_label.tiff"


def test_resolve_reports_unpaired_and_orphans(ds_copy, caplog):
    shutil.copy(ds_copy / "images" / "synth_0000.png", ds_copy / "images" / "extra.png")
    shutil.copy(ds_copy / "labels" / "synth_0001_label.tiff", ds_copy / "labels" / "ghost_label.tiff")
    with caplog.at_level(logging.WARNING, logger="utils.datasplits"):
        samples = resolve_split(cfg_for(ds_copy, train=["."]), "train")
    assert len(samples) == N
    text = caplog.text
    assert "images without labels/NAME_label.tiff (skipped): 1 (extra.png)" in text
    assert "labels without an image" in text and "ghost_label.tiff" in text


def test_resolve_txt_split_files(data_root, tmp_path, caplog):
    lines = ["images/synth_0001.png", "# comment", "", "images/synth_0004.png", "images/nope.png"]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    cfg = cfg_for(data_root, yaml_dir=tmp_path, train=["train.txt"])
    with caplog.at_level(logging.WARNING, logger="utils.datasplits"):
        samples = resolve_split(cfg, "train")
    assert [s.image.name for s in samples] == ["synth_0001.png", "synth_0004.png"]
    assert all(s.label.is_file() and s.modality == "bf" for s in samples)
    assert "nope.png" in caplog.text


def test_empty_split_is_an_error_naming_it(data_root):
    with pytest.raises(uio.InputError, match="'val'"):
        resolve_split(cfg_for(data_root, train=["."]), "val")


def test_modality_filter_with_and_without_meta(ds_copy, monkeypatch, tmp_path):
    bf = resolve_split(cfg_for(ds_copy, train=["."], modality="bf"), "train")
    assert {s.modality for s in bf} == {"bf"} and len(bf) == 2
    os.remove(ds_copy / "meta.csv")
    calls = []
    def fake(raw):  # synthetic gs images are the uint16 TIFFs
        calls.append(1)
        return "gs" if raw.dtype == np.uint16 else "fl"
    monkeypatch.setattr(mcache, "classify_raw", fake)
    mcache._MODALITY_MEMO.clear()
    gs = resolve_split(cfg_for(ds_copy, train=["."], modality="gs"), "train", cache_dir=tmp_path / "c")
    assert [s.image.suffix for s in gs] == [".tif", ".tif"] and len(calls) == N
    mcache._MODALITY_MEMO.clear()  # a new process: the persisted modalities.json answers
    resolve_split(cfg_for(ds_copy, train=["."], modality="gs"), "train", cache_dir=tmp_path / "c")
    assert len(calls) == N


def test_evaluate_reads_split_files_as_training_does(data_root, tmp_path, caplog):
    import evaluate

    name = data_root.name
    lines = [f"{name}/images/synth_0001.png", "# comment", "", f"{name}/images/nope.png",
             f"{name}/images/synth_0004.png"]
    (tmp_path / "val.txt").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="utils.datasplits"):
        files = evaluate.image_files(data_root, str(tmp_path / "val.txt"))
    assert files == [data_root / "images" / "synth_0001.png", data_root / "images" / "synth_0004.png"]
    assert "nope.png" in caplog.text
    with pytest.raises(uio.InputError, match="split file of --list not found"):
        evaluate.image_files(data_root, str(tmp_path / "missing.txt"))
