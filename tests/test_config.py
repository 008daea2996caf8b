"""Validated YAML configuration: typos and wrong types are errors naming the key."""
from pathlib import Path

import pytest
import yaml

from utils.config import ConfigError, DataConfig, Hyp, load_config, load_data_config

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


@pytest.mark.parametrize("path", sorted((REPO / "data").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_data_files_are_valid(path):
    if path.parent.name == "hyps" or path.name == "routing.yaml":
        return
    load_data_config(path)
