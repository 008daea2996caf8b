"""benchmarks.unseen (leave one source out): the pool, guard and test images never overlap, the K
images are spread over the pool, and the source's pairs come from every split of a dataset YAML."""
from __future__ import annotations

import pytest

from benchmarks.unseen import append_row, link_folder, pool_and_test, source_pairs, spread
from utils.synthetic import write_dataset


def test_pool_guard_and_test_are_disjoint_and_in_order():
    pairs = list(range(40))
    pool, test = pool_and_test(pairs, 30, 5)
    assert pool == list(range(30)) and test == list(range(35, 40))
    with pytest.raises(SystemExit, match="too few"):
        pool_and_test(pairs, 30, 10)


def test_k_images_are_spread_over_the_pool():
    pool = list(range(30))
    assert spread(pool, 1) == [0]
    assert spread(pool, 3) == [0, 14, 29]
    assert spread(pool, 10)[0] == 0 and spread(pool, 10)[-1] == 29 and len(spread(pool, 10)) == 10


def test_source_pairs_cover_both_splits_and_link_a_challenge_folder(tmp_path):
    root = write_dataset(tmp_path / "set", 5, modalities=("fl",), size=(48, 48), seed=1)
    names = sorted(p.name for p in (root / "images").iterdir())
    (tmp_path / "train.txt").write_text("\n".join(f"images/{n}" for n in names[:3]) + "\n")
    (tmp_path / "val.txt").write_text("\n".join(f"images/{n}" for n in names[3:]) + "\n")
    yaml_path = tmp_path / "data.yaml"
    yaml_path.write_text(f"path: {root}\ntrain: [{tmp_path / 'train.txt'}]\n"
                         f"val: [{tmp_path / 'val.txt'}]\nsources:\n  syn: {{match: '*'}}\n")
    pairs = source_pairs(str(yaml_path), "syn")
    assert [p[0].name for p in pairs] == names
    with pytest.raises(SystemExit, match="no source"):
        source_pairs(str(yaml_path), "other")
    images = link_folder(pairs[:2], tmp_path / "linked")
    assert sorted(p.name for p in images.iterdir()) == names[:2]
    assert len(list((images.parent / "labels").iterdir())) == 2


def test_rows_with_new_columns_keep_the_old_rows(tmp_path):
    """A CSV of an older version (fewer columns) is rewritten with both sets, not misaligned."""
    import pandas as pd
    path = tmp_path / "unseen.csv"
    append_row(path, {"source": "a", "k": 1, "f1": 0.5})
    append_row(path, {"source": "a", "k": 3, "f1": 0.6})
    append_row(path, {"source": "b", "held_back": False, "k": 3, "f1": 0.7})
    append_row(path, {"source": "b", "held_back": True, "k": 3, "f1": 0.8})
    frame = pd.read_csv(path)
    assert list(frame.f1) == [0.5, 0.6, 0.7, 0.8] and list(frame.k) == [1, 3, 3, 3]
    assert frame.held_back.isna().sum() == 2 and list(frame.held_back[2:]) == [False, True]
