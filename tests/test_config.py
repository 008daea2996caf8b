"""Validated YAML configuration: typos and wrong types are errors naming the key."""
from pathlib import Path

import pytest
import yaml

from utils.config import ConfigError, DataConfig, Hyp, load_config, load_data_config, load_hyp

REPO = Path(__file__).resolve().parents[1]


def test_unknown_key_is_an_error(tmp_path):
    (tmp_path / "h.yaml").write_text("lr0: 0.01\nlr_0: 0.02\n")
    with pytest.raises(ConfigError, match="lr_0"):
        load_config(Hyp, tmp_path / "h.yaml")


def test_types_are_checked():
    with pytest.raises(ConfigError, match="lr0"):
        load_config(Hyp, {"lr0": "fast"})
    with pytest.raises(ConfigError, match="mosaic"):
        load_config(Hyp, {"mosaic": 1.5})
    assert load_config(Hyp, {"lr0": 1}).lr0 == 1.0  # an int where a float is expected is fine
    with pytest.raises(ConfigError, match="warmup_min_iters"):
        load_config(Hyp, {"warmup_min_iters": -1})


def test_finetuning_warms_up_for_its_one_epoch():
    """hyp.finetune.yaml's warm-up is one epoch of 8 batches, not YOLOv5's 100 steps (a quarter
    of a 10-minute finetuning)."""
    from utils.engine import warmup_iters
    from utils.finetune import EPOCH_BATCHES, FINETUNE_HYP

    hyp = load_hyp(FINETUNE_HYP)
    assert warmup_iters(hyp.warmup_epochs, EPOCH_BATCHES, 50, hyp.warmup_min_iters) == EPOCH_BATCHES
    assert load_hyp(REPO / "data" / "hyps" / "hyp.labeled.yaml").warmup_min_iters == 100


def test_data_paths_resolve_against_the_yaml(tmp_path):
    sub = tmp_path / "cfg"
    sub.mkdir()
    (sub / "d.yaml").write_text(yaml.safe_dump({"path": "../data", "train": "Train", "val": ["a", "b"]}))
    cfg = load_data_config(sub / "d.yaml")
    assert cfg.root == (tmp_path / "data").resolve()
    assert cfg.train == ["Train"] and cfg.val == ["a", "b"]
    with pytest.raises(ConfigError, match="names"):
        load_config(DataConfig, {"path": ".", "names": ["a", "b"]})
    with pytest.raises(ConfigError, match="missing required key path"):
        load_config(DataConfig, {"train": "x"})


@pytest.mark.parametrize("path", sorted((REPO / "data" / "hyps").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_hyp_files_are_valid(path):
    load_config(Hyp, path)


def test_a_renamed_hyp_file_is_read_by_its_old_name(tmp_path, caplog):
    """hyp.ws_flourescene.yaml (the original framework's spelling) reads hyp.ws_fluorescence.yaml
    with a warning; a file of the old name that exists is read as it is."""
    hyps = REPO / "data" / "hyps"
    with caplog.at_level("WARNING"):
        old = load_hyp(hyps / "hyp.ws_flourescene.yaml")
    assert old == load_hyp(hyps / "hyp.ws_fluorescence.yaml")
    assert sum("renamed hyp.ws_fluorescence.yaml" in r.message for r in caplog.records) == 1
    (tmp_path / "hyp.ws_flourescene.yaml").write_text("lr0: 0.5\n")
    assert load_hyp(tmp_path / "hyp.ws_flourescene.yaml").lr0 == 0.5
    with pytest.raises(ConfigError, match="no such file"):
        load_hyp(tmp_path / "sub" / "hyp.ws_flourescene.yaml")


@pytest.mark.parametrize("path", sorted((REPO / "data").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_data_files_are_valid(path):
    if path.parent.name == "hyps" or path.name == "routing.yaml":
        return
    load_data_config(path)


def test_extends_merges_a_base_whose_paths_keep_their_meaning(tmp_path):
    base_dir, sub = tmp_path / "base", tmp_path / "base" / "variants"
    sub.mkdir(parents=True)
    (base_dir / "b.yaml").write_text(yaml.safe_dump({
        "path": "../data", "train": ["splits/t.txt", "Folder"], "val": "splits/v.txt",
        "modality": "gs", "sources": {"a": {"match": "a/*", "share": 0.25}}, "epoch_size": 50}))
    (sub / "all.yaml").write_text("extends: ../b.yaml\ntrain: [mine.txt]\nepoch_size: 80\n")
    cfg = load_data_config(sub / "all.yaml")
    assert cfg.root == (tmp_path / "data").resolve()            # BASE's path, from BASE's folder
    assert cfg.train == ["mine.txt"] and cfg.epoch_size == 80     # the file's own keys win, whole
    assert cfg.val == [str(base_dir / "splits/v.txt")]           # inherited split file: BASE's folder
    assert cfg.modality == "gs" and cfg.sources["a"].share == 0.25
    (base_dir / "b2.yaml").write_text("extends: b.yaml\nval: [Folder]\n")   # same folder: as written
    cfg2 = load_data_config(base_dir / "b2.yaml")
    assert cfg2.train == ["splits/t.txt", "Folder"] and cfg2.val == ["Folder"]


def test_extends_errors_name_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\npath: .\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_data_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml: no such file"):
        load_data_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("path: .\nextend: a.yaml\n")
    with pytest.raises(ConfigError, match="extend"):
        load_data_config(tmp_path / "d.yaml")


def test_the_train_on_everything_files_add_only_the_validation_images():
    for name in ("cells", "cells_bf", "cells_fl", "cells_gs", "real"):
        split, full = load_data_config(REPO / f"data/{name}.yaml"), load_data_config(REPO / f"data/{name}_all.yaml")
        assert full.train == split.train + split.val, name
        assert (full.val, full.sources, full.modality, full.epoch_size, full.root) == \
            (split.val, split.sources, split.modality, split.epoch_size, split.root), name
