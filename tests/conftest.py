"""Shared fixtures: a small synthetic multi-modality dataset in the NeurIPS layout."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from utils.config import DataConfig
from utils.datasplits import resolve_split
from utils.label_cache import DatasetCache
from utils.synthetic import write_dataset

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """A data YAML over 8 synthetic 96x96 images (fl, bf, gs), the same images for train and val."""
    root = tmp_path_factory.mktemp("synthetic")
    write_dataset(root / "set", 8, size=(96, 96), seed=0, size_range=(10, 30))
    cfg = root / "data.yaml"
    cfg.write_text(yaml.safe_dump({"path": "set", "train": ["."], "val": ["."]}))
    return cfg


@pytest.fixture(scope="session")
def trained_ckpt(tmp_path_factory, synthetic_data):
    """A few steps of train_main.py on synthetic data (the weights only need to run)."""
    out = tmp_path_factory.mktemp("train")
    _run_script(["train_main.py", "--data", synthetic_data, "--hyp", "data/hyps/hyp.labeled.yaml",
                 "--img", "64", "--batch", "2", "--epochs", "1", "--workers", "0", "--device", "cpu",
                 "--project", out, "--name", "t"])
    return out / "t" / "weights" / "last.pt"


def _run_script(args, cwd=REPO, timeout=600, env_extra=None, check=True):
    """Run ``python ARGS`` (a repository script or ``-m torch.distributed.run``) from the repo root."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture
def run_script():
    return _run_script


DATASET_IMAGES = 6  # images of the data_root dataset (fl, bf, gs cycling), 72 x 96 pixels each


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """A small read-only-by-convention synthetic dataset (utils.datasplits, label_cache, dataset)."""
    return write_dataset(tmp_path_factory.mktemp("data") / "ds", DATASET_IMAGES, size=(72, 96), seed=0)


def disc_grid(shape, diameter: int, spacing: int) -> np.ndarray:
    """``(H, W)`` int32 label of separate discs of ``diameter`` px, centred every ``spacing`` px
    from ``spacing // 2`` (only whole discs)."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    label = np.zeros(shape, np.int32)
    centres = [(y, x) for y in range(spacing // 2, shape[0] - diameter // 2, spacing)
               for x in range(spacing // 2, shape[1] - diameter // 2, spacing)]
    for i, (y, x) in enumerate(centres, 1):
        label[(yy - y + 0.5) ** 2 + (xx - x + 0.5) ** 2 <= (diameter / 2) ** 2] = i
    return label


def centroid_offsets(label: np.ndarray, image: np.ndarray, margin: int = 3) -> np.ndarray:
    """Per object of ``label``: the distance (px) between its centroid and the brightness
    centroid of ``image`` ``(H, W)`` in the object's bounding box grown by ``margin`` px (objects
    further apart than that). 0 when a resized label sits where its resized image does."""
    from scipy import ndimage
    out = []
    for i, box in enumerate(ndimage.find_objects(label), 1):
        if box is None:
            continue
        box = tuple(slice(max(s.start - margin, 0), s.stop + margin) for s in box)
        c_label = ndimage.center_of_mass(label[box] == i)
        c_image = ndimage.center_of_mass(image[box].astype(np.float64))
        out.append(np.hypot(*np.subtract(c_label, c_image)))
    return np.asarray(out)


def cfg_for(root, yaml_dir=None, **kw) -> DataConfig:
    """A DataConfig over ``root`` (split files relative to ``yaml_dir``, default ``root``)."""
    return DataConfig(path=str(root), yaml_dir=str(yaml_dir or root), **kw)


@pytest.fixture
def ds_copy(data_root, tmp_path):
    """A writable copy of data_root (tests that add or change files)."""
    return shutil.copytree(data_root, tmp_path / "ds")


@pytest.fixture
def cache(data_root, tmp_path):
    """``(samples, DatasetCache)`` of data_root's "train" split."""
    samples = resolve_split(cfg_for(data_root, train=["."]), "train")
    return samples, DatasetCache(samples, tmp_path / "cache")
