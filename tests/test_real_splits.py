"""The fixed real-data splits (utils.real_splits): time blocks with a guard, files as the code
makes them."""
import re

import pytest

from tests.conftest import REPO
from utils.real_splits import CTC_GUARD, block_split, ctc_split, write_splits

SHARED = REPO.parent / "shared" / "data"


def _frame(name):
    return int(re.search(r"_t(\d+)$", name).group(1))


def test_block_split_keeps_a_guard_between_train_and_val():
    names = [f"seq_t{t:03d}" for t in range(0, 40, 2)][::-1]   # unsorted, every 2nd frame
    train, val = block_split(names, 0.2, guard=2)
    assert len(val) == 4 and len(train) == 14
    assert max(map(_frame, train)) < min(map(_frame, val))
    assert min(map(_frame, val)) - max(map(_frame, train)) == 6   # two sampled frames skipped
    with pytest.raises(ValueError, match="too few"):
        block_split(names[:3], 0.2, guard=2)


def test_ctc_split_per_sequence():
    names = [f"ctc_dic_02_t{t:03d}" for t in range(20)] + [f"ctc_fluo_02_t{t:03d}" for t in range(0, 30, 3)]
    train, val = ctc_split(names)
    for prefix in ("ctc_dic_", "ctc_fluo_"):
        tr = [_frame(n) for n in train if n.startswith(prefix)]
        va = [_frame(n) for n in val if n.startswith(prefix)]
        assert va and tr and max(tr) < min(va)
    assert len([n for n in names if n.startswith("ctc_dic_")]) - CTC_GUARD["ctc_dic_"] == \
        len([n for n in train + val if n.startswith("ctc_dic_")])


@pytest.mark.skipif(not (SHARED / "ctc").is_dir(), reason="needs ../shared/data")
def test_committed_split_files_are_what_the_code_writes(tmp_path):
    write_splits(SHARED, tmp_path)
    for f in sorted(tmp_path.glob("*.txt")):
        assert f.read_text() == (REPO / "data" / "splits" / f.name).read_text(), f.name
    train = set((REPO / "data/splits/ctc_train.txt").read_text().split())
    assert not train & set((REPO / "data/splits/ctc_val.txt").read_text().split())
