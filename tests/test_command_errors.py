"""Training and tool commands end a user's mistake in one line, exit 2 (issue #14), and a new or
resumed run removes the temporary files a killed one left."""
import os

import pytest
import torch
import yaml

from tests.conftest import REPO
from tests.test_train import COMMON
from utils.cli import train_cli
from utils.tasks import AWFTask


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def _train(argv, caplog):
    caplog.clear()
    with caplog.at_level("INFO"), pytest.raises(SystemExit) as stop:
        train_cli(AWFTask, "test", argv=[str(a) for a in argv], data="", hyp="")
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    return stop.value.code, errors[0]


def test_training_mistakes_are_one_line_exit_2(tmp_path, synthetic_data, trained_ckpt, caplog):
    base = [*COMMON, "--epochs", "1", "--project", tmp_path]
    typo = tmp_path / "typo.yaml"
    typo.write_text(synthetic_data.read_text() + "trian: [.]\n")
    nowhere = tmp_path / "nowhere.yaml"
    nowhere.write_text(yaml.safe_dump({"path": str(tmp_path / "no_such_set"), "train": ["."], "val": ["."]}))
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Evil()}, evil)
    frozen = tmp_path / "frozen.yaml"  # a module the model does not have
    frozen.write_text((REPO / "data/hyps/hyp.labeled.yaml").read_text() + "freeze: [backbone.layer9]\n")
    cases = [(["--data", typo], "trian"),
             (["--data", nowhere], ("no_such_set: dataset folder missing",  # where to get data
                                    "NeurIPS 2022", "python -m utils.synthetic")),
             (["--data", tmp_path / "missing.yaml"], "missing.yaml"),
             (["--data", synthetic_data, "--weights", evil], "refused"),
             (["--data", synthetic_data, "--hyp", frozen], "'backbone.layer9'"),
             (["--resume", trained_ckpt], "already finished"),
             (["--resume", evil], "evil.pt")]
    for extra, words in cases:
        code, line = _train([*base, *extra], caplog)
        words = [words] if isinstance(words, str) else words
        assert code == 2 and all(w in line for w in words), (extra, line)


def test_a_run_removes_the_temporaries_of_a_killed_one(tmp_path, synthetic_data, caplog):
    weights = tmp_path / "again" / "weights"
    weights.mkdir(parents=True)
    stale = weights / ".last.x1y2z3w4.tmp.pt"
    stale.write_bytes(b"\0" * 1000)  # what kill -9 during torch.save leaves
    with caplog.at_level("INFO"):
        train_cli(AWFTask, "test", argv=[str(a) for a in [*COMMON, "--epochs", "1", "--data", synthetic_data,
                                                           "--project", tmp_path, "--name", "again",
                                                           "--exist-ok"]], data="", hyp="")
    assert not stale.exists() and (weights / "last.pt").is_file()
    assert not [p for p in weights.iterdir() if p.name.startswith(".")]


def test_tools_end_in_one_line(tmp_path, run_script):
    for args in (["-m", "utils.autoanchor", "--data", tmp_path / "missing.yaml"],
                 ["-m", "utils.tune_nms", "--ckpt", tmp_path / "none.pt", "--data", tmp_path / "x.yaml",
                  "-o", tmp_path / "t.csv"]):
        proc = run_script(args, check=False)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        errors = [ln for ln in proc.stderr.splitlines() if "ERROR" in ln]
        assert len(errors) == 1 and str(tmp_path) in errors[0], proc.stderr[-2000:]
