"""Every flag of the training scripts, predict.py and utils.autoanchor has help text, and
defaults are shown (`--help` is what a new user reads first)."""
import argparse
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from utils.cli import training_parser


def _undocumented(parser: argparse.ArgumentParser) -> list[str]:
    return [a.option_strings[0] for a in parser._actions
            if a.option_strings and a.help is None and not isinstance(a, argparse._HelpAction)]


def test_every_training_flag_has_help(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per flag
    parser = training_parser("t", data="d.yaml", hyp="h.yaml")
    assert _undocumented(parser) == []
    text = parser.format_help()
    for flag, default in (("--epochs", "100"), ("--project", "runs/train"), ("--name", "exp"),
                          ("--seed", "0")):
        assert flag in text and f"(default: {default})" in text


def test_every_prediction_flag_has_help():
    sys.path.insert(0, str(REPO))
    import predict
    parser = argparse.ArgumentParser()
    from utils.cli import add_prediction_args
    add_prediction_args(parser)
    assert _undocumented(parser) == []
    help_text = subprocess.run([sys.executable, "predict.py", "--help"], cwd=REPO, check=True,
                               capture_output=True, text=True).stdout
    assert "--save-rois" in help_text and "--save-geojson" in help_text
    assert predict.parse_args(["-i", "a", "-o", "b", "--save-rois"]).save_rois


@pytest.mark.parametrize("module, default", [("utils.autoanchor", "(default: 1000)")])
def test_module_help_shows_defaults(module, default):
    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    assert default in out
    assert "--seed SEED" in out and "search seed" in out


def test_prediction_scripts_do_not_load_the_training_stack():
    code = ("import sys, predict, evaluate, utils.predictor, utils.cli; "
            "sys.exit('utils.engine' in sys.modules or 'utils.tasks' in sys.modules)")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_training_flags_are_the_train_options():
    from dataclasses import fields

    from utils.cli import options_from_args
    from utils.options import TrainOptions
    parser = training_parser("t", data="d.yaml", hyp="h.yaml", epochs=7)
    opt = options_from_args(parser.parse_args(["--img-size", "320", "--cos-lr", "--amp", "off"]))
    assert opt == TrainOptions(data="d.yaml", hyp="h.yaml", epochs=7, img=320, cos_lr=True,
                               amp="off")
    dests = {a.dest for a in parser._actions if not isinstance(a, argparse._HelpAction)}
    assert dests == {f.name for f in fields(TrainOptions)} - {"save_dir"}  # one flag per option
    with pytest.raises(SystemExit):  # torchrun sets LOCAL_RANK; no flag is taken and dropped
        parser.parse_args(["--local-rank", "0"])
    with pytest.raises(TypeError, match="bogus"):
        training_parser("t", data="d.yaml", hyp="h.yaml", bogus=1)
    with pytest.raises(SystemExit):  # an option without a default is a required flag
        training_parser("t", hyp="h.yaml").parse_args([])


@pytest.mark.parametrize("script", ["finetune.py", "predict.py", "evaluate.py"])
def test_help_shows_no_misleading_default(script):
    """A switch's stored value is not its default ("--no-val (default: True)" reads as "no
    validation by default"), and a help that states its default gets no second one."""
    out = subprocess.run([sys.executable, script, "--help"], cwd=REPO, check=True,
                         capture_output=True, text=True, env={**os.environ, "COLUMNS": "400"}).stdout
    assert "(default: True)" not in out and "(default: False)" not in out
    assert not [line for line in out.splitlines() if line.count("(default:") > 1]
    assert "--quiet" in out
