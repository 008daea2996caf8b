"""The README's commands run as written, and the documentation keeps each fact in one place.

- The install and quick-start commands run on a fresh clone (the tracked files only); the others
  (installs, training, your own data) are listed in NOT_RUN with the reason.
- No page quotes a cell count of a bundled example: counts change with the weights, and the
  quick start's own run is the one source of them.
- README.md stays short, names no commit or issue, and links only to files that exist; its
  install and test commands are CI's; its results are the model card's.
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

README = REPO / "README.md"
CARD = REPO / "ckpts" / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, CARD, *DOCS]
MAX_README_LINES = 200
EXAMPLES = sorted(p.stem for p in (REPO / "examples").iterdir() if p.is_file())

# Command prefixes of the README that this test does not run, and why.
NOT_RUN = {
    "python -m venv": "makes a virtual environment (CI starts from a fresh one)",
    "python -m pip install": "installs packages (CI runs exactly these)",
    "python -m pytest": "the test suite itself",
    "python -m ruff": "the linter (CI runs it)",
    "python finetune.py -i MY/": "needs your own labelled images",
    "python predict.py -i MY/": "needs your own images",
    "python evaluate.py": "needs the labelled data in ../shared/data",
    "python train_main.py": "trains for hours",
    "torchrun": "trains on GPUs",
    "python -m utils.checkpoint runs/": "needs a training run",
}
# Commands that run here (in the sections below), on the bundled examples.
RUN = ("python predict.py -i examples ", "python -m utils.setup_check")
RUN_SECTIONS = ("Install", "Quick start")


def section(text: str, title: str) -> str:
    """The body of the README's ``## title`` section."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"README: no '## {title}' section"
    return match.group(1)


def bash_commands(text: str) -> list[str]:
    """The commands of the fenced bash blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(re.sub(r"\s+", " ", line))
    return commands


def not_run_reason(command: str):
    return next((why for prefix, why in NOT_RUN.items() if command.startswith(prefix)), None)


def fresh_clone(dst: Path) -> Path:
    """The tracked top-level files and folders of the repository, linked into ``dst``: a clone's
    state without outputs/ or runs/ of earlier commands (the weights are not copied)."""
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                            check=False)
    names = ({p.split("/")[0] for p in listed.stdout.split()} if listed.returncode == 0 and listed.stdout
             else {p.name for p in REPO.iterdir() if p.name not in ("outputs", "runs", ".git")})
    dst.mkdir()
    for name in sorted(names):
        if (REPO / name).exists():
            (dst / name).symlink_to(REPO / name)
    return dst


def run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(cwd))
    proc = subprocess.run(command.replace("python ", f"{sys.executable} ", 1), shell=True, cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"{command} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc


def test_every_readme_command_is_run_or_listed_with_a_reason():
    text = README.read_text()
    runnable = {c for title in RUN_SECTIONS for c in bash_commands(section(text, title))}
    for command in bash_commands(text):
        if command in runnable and command.startswith(RUN):
            continue
        assert not_run_reason(command), (
            f"README command neither run by this test nor listed in NOT_RUN: {command}")


def test_quick_start_runs_on_a_fresh_clone(tmp_path):
    text = README.read_text()
    clone = fresh_clone(tmp_path / "clone")
    commands = [c for title in RUN_SECTIONS for c in bash_commands(section(text, title))
                if c.startswith(RUN)]
    assert any(c.startswith("python predict.py") for c in commands)
    for command in commands:
        if command.startswith("python -m utils.setup_check") and \
                not (clone / "utils" / "setup_check.py").exists():
            continue  # the set-up check is not in this checkout yet
        run(command, clone)
    # every output file the quick start names exists, for each bundled example
    quick = section(text, "Quick start")
    named = set(re.findall(r"`(outputs/[\w.]+)`", quick))
    assert {"outputs/NAME_label.tiff", "outputs/predictions.csv"} <= named
    for pattern in named:
        for stem in EXAMPLES:
            path = clone / pattern.replace("NAME", stem)
            assert path.is_file(), f"the quick start names {pattern}, but {path.name} is missing"
    # the Python snippet, run from the clone's root, counts what predict.py wrote
    import pandas as pd
    snippet = re.search(r"```python\n(.*?)```", quick, re.S).group(1)
    out = run(f"python -c {shlex.quote(snippet)}", clone).stdout
    table = pd.read_csv(clone / "outputs" / "predictions.csv")
    assert f"{table[table['name'] == 'fl_cells']['n_cells'].iloc[-1]} cells;" in out


EXAMPLE_NAMES = re.compile("|".join(map(re.escape, EXAMPLES)))
CELL_COUNT = re.compile(r"\b\d[\d,]*\s+(cells|nuclei|objects|instances)\b|cells=\d")
WINDOW = 400   # characters either side of a count in which an example's name makes it its count


def example_counts(text: str) -> list[str]:
    """The cell counts of ``text`` that stand near a bundled example's name."""
    return [m.group(0) for m in CELL_COUNT.finditer(text)
            if EXAMPLE_NAMES.search(text[max(0, m.start() - WINDOW):m.end() + WINDOW])]


def test_no_page_quotes_a_cell_count_of_an_example():
    for page in PAGES:
        assert example_counts(page.read_text()) == [], (
            f"{page.relative_to(REPO)} quotes a cell count of an example; counts change with the "
            "weights: do not quote them")


HASH = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b")
ISSUE = re.compile(r"(?<![\w&])#\d+\b|\bissue\s+#?\d+", re.I)


@pytest.mark.parametrize("page", [README, CARD], ids=["README.md", "ckpts/README.md"])
def test_page_names_no_commit_and_no_issue(page):
    text = page.read_text()
    assert not HASH.findall(text), f"{page.name}: commit hashes {HASH.findall(text)}"
    assert not ISSUE.findall(text), f"{page.name}: issue references {ISSUE.findall(text)}"


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= MAX_README_LINES


def test_every_relative_link_exists():
    docs_links = set()
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+://|#|mailto:", target):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            assert path.exists(), f"{page.relative_to(REPO)} links to a missing {target}"
            if page == README and target.startswith("docs/"):
                docs_links.add(path.name)
    # the README's documentation index names every page of docs/
    assert {p.name for p in DOCS} <= docs_links


def test_install_and_test_commands_are_ci_s():
    ci = REPO / ".ci" / "run"
    if not ci.is_file():
        pytest.skip("no .ci/run in this checkout")
    readme = set(bash_commands(README.read_text()))
    for line in ci.read_text().splitlines():
        line = line.strip()
        if line.startswith("python -m ") and not line.startswith("python -m venv"):
            assert line in readme, f"CI runs {line!r}, which the README does not show"


def test_readme_results_are_the_model_card_s():
    figures = re.findall(r"\b0\.\d{3}\b", section(README.read_text(), "Results at a glance"))
    assert figures
    card = CARD.read_text()
    assert [f for f in figures if f not in card] == []


def test_prediction_doc_quotes_the_size_rule_of_routing_yaml():
    from utils.inference import MAX_FULL_SIZE
    from utils.routing import load_routing
    rule = load_routing().size_rule
    text = (REPO / "docs" / "PREDICTION.md").read_text()
    for quoted in (f"{rule.min_diameter:g} to {rule.max_diameter:g} pixels",
                   f"measure {rule.small_target:g} px", f"or {rule.large_target:g} px",
                   f"past {MAX_FULL_SIZE} px", f"cells under {rule.probe_below_diameter:g} px",
                   f"score under {rule.probe_below_conf:g}", f"{rule.probe_gain:g} times",
                   f"measuring {rule.min_diameter:g} px or more there"):
        assert quoted in text, f"docs/PREDICTION.md should say {quoted!r} (data/routing.yaml)"


def test_routing_yaml_comments_carry_no_measurements():
    for line in (REPO / "data" / "routing.yaml").read_text().splitlines():
        comment = line.partition("#")[2]
        assert not re.search(r"\b0\.\d{3}\b", comment), f"a figure in routing.yaml: {line}"
