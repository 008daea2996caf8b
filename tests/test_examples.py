"""The bundled examples/: present, small, one per branch, reproducible, and predict.py runs on them."""
import numpy as np
import torch

from models.awf import AWF
from utils.checkpoint import save_checkpoint_atomic
from utils.examples import EXAMPLES_DIR, IHC_NAME, REAL, REAL_ROOT, SYNTHETIC, real_crop, write_examples
from utils.io import list_images, read_image, read_label, write_image
from utils.modality import classify_modality

# the repository's size budget for examples/ (bytes)
MAX_TOTAL_BYTES = 200 * 1024
# the branch each example is meant to exercise
EXPECTED_MODALITY = {"fl_cells.png": "fl", "bf_stained.jpg": "bf", "gs_phase.png": "gs", IHC_NAME: "bf"}


def test_examples_are_committed_small_and_cover_the_branches():
    files = list_images(EXAMPLES_DIR)
    assert {p.name for p in files} == set(SYNTHETIC) | set(REAL) | {IHC_NAME}
    assert sum(p.stat().st_size for p in files) < MAX_TOTAL_BYTES
    for path in files:
        assert classify_modality(read_image(path)) == EXPECTED_MODALITY[path.name], path.name


def test_examples_regenerate_from_the_module(tmp_path):
    paths = write_examples(tmp_path)
    expected = {p.name for p in list_images(EXAMPLES_DIR)}
    if not REAL_ROOT.is_dir():  # a fresh clone without ../shared: the real crop is not rewritten
        expected -= set(REAL)
    assert {p.name for p in paths} == expected
    for path in paths:
        new, old = read_image(path), read_image(EXAMPLES_DIR / path.name)
        assert new.shape == old.shape, path.name
        if path.suffix == ".png":  # lossless: the committed file is what the module writes
            diff = np.abs(new.astype(np.int16) - old.astype(np.int16)).mean()
            assert diff < 1.0, f"{path.name} drifted; regenerate: python -m utils.examples"


def test_real_crop_scales_16_bit_to_8_bit_and_skips_a_missing_source(tmp_path):
    rel, (y, x, side) = REAL["gs_phase.png"]
    assert real_crop("gs_phase.png", tmp_path) is None           # no ../shared/data: skipped
    rng = np.random.default_rng(0)
    image = rng.integers(5000, 60000, (y + side + 8, x + side + 8), dtype=np.uint16)
    image[y, x] = 65535                                          # a saturated pixel, clipped
    (tmp_path / rel).parent.mkdir(parents=True)
    write_image(tmp_path / rel, image)
    crop = real_crop("gs_phase.png", tmp_path)
    assert crop.shape == (side, side) and crop.dtype == np.uint8
    assert crop.min() == 0 and crop.max() == 255
    assert (crop == 255).mean() < 0.01 and (crop == 0).mean() < 0.01   # 0.5% each side saturates
    # monotone in the raw values: the crop is the image's own window, not another one
    window = image[y:y + side, x:x + side].astype(np.int64)
    order = np.argsort(window.ravel())
    assert np.all(np.diff(crop.ravel()[order].astype(int)) >= 0)


def test_predict_runs_on_the_examples(tmp_path, run_script):
    torch.manual_seed(0)
    model = AWF()
    save_checkpoint_atomic({"kind": "awf", "model": model.state_dict(),
                            "model_config": model.config_dict()}, tmp_path / "random.pt")
    run_script(["predict.py", "-i", "examples", "-o", tmp_path / "out", "--ckpt", tmp_path / "random.pt"],
               env_extra={"OMP_NUM_THREADS": "1"})
    for path in list_images(EXAMPLES_DIR):
        label = read_label(tmp_path / "out" / f"{path.stem}_label.tiff")
        assert label.shape == read_image(path).shape[:2]
