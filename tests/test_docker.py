"""Dockerfile / predict.sh in the challenge format, checked without a Docker engine.

The Dockerfile is parsed (COPY sources exist, are neither git- nor docker-ignored, dependencies
come from requirements.txt), and predict.sh runs in a folder holding only what the image COPYs,
with INPUT_DIR / OUTPUT_DIR / CKPT overridden, as `sh predict.sh` runs inside the container.
"""
import fnmatch
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.awf import AWF
from utils.checkpoint import save_checkpoint_atomic
from utils.io import FILE_MODE, read_label, write_image
from utils.synthetic import make_sample

REPO = Path(__file__).resolve().parents[1]
# input sizes (H, W) px of the predict.sh run: not multiples of 32, one taller, one wider
INPUT_SIZES = {"cells_a.png": (70, 100), "cells_b.tif": (120, 90)}


def instructions(dockerfile: Path = REPO / "Dockerfile") -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` per Dockerfile instruction, continuation lines joined."""
    out, pending = [], ""
    for line in dockerfile.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def copy_sources() -> list[str]:
    """Source paths of every COPY/ADD from the build context (flags such as --chown dropped,
    destination dropped; ``COPY --from=STAGE`` copies between stages, not from the context)."""
    sources = []
    for word, rest in instructions():
        if word in ("COPY", "ADD") and "--from=" not in rest:
            args = [a for a in shlex.split(rest) if not a.startswith("--")]
            assert len(args) >= 2, f"{word} {rest}: needs a source and a destination"
            sources += args[:-1]
    return sources


def dockerignored(path: str) -> bool:
    """Whether .dockerignore excludes ``path`` or a folder above it (last matching rule wins)."""
    rules = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    parts = Path(path).parts
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for rule in rules:
        negate, pattern = rule.startswith("!"), rule.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes):
            ignored = not negate
    return ignored


def test_copy_sources_exist_and_are_not_ignored():
    sources = copy_sources()
    assert {"predict.py", "predict.sh", "requirements.txt", "ckpts/"} <= set(sources)
    for src in sources:
        assert (REPO / src).exists(), f"Dockerfile copies {src}, missing from the repository"
        assert not dockerignored(src), f"Dockerfile copies {src}, excluded by .dockerignore"
        if shutil.which("git") and (REPO / ".git").exists():
            check = subprocess.run(["git", "check-ignore", "-q", src], cwd=REPO, check=False)
            ignored = check.returncode == 0
            assert not ignored, f"Dockerfile copies {src}, which .gitignore keeps out of a clone"


def test_dependencies_come_from_requirements():
    steps = instructions()
    # ARG BASE=python:3.11-slim, every stage FROM ${BASE}: the slim image unless told otherwise
    assert steps[0] == ("ARG", "BASE=python:3.11-slim")
    froms = [r for w, r in steps if w == "FROM"]
    assert froms and all(r.split()[0] == "${BASE}" for r in froms) and froms[-1] == "${BASE}"
    final = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM"):]
    # the code arrives in one layer, after the dependency layer (vfs copies the image per layer)
    assert [w for w, r in final if w in ("COPY", "ADD") and "--from=" in r] == ["COPY"]
    assert [i for i, (w, r) in enumerate(final) if "--from=" in r][0] \
        > [i for i, (w, r) in enumerate(final) if w == "RUN"][-1]
    copied = [i for i, (w, r) in enumerate(steps) if w == "COPY" and "requirements.txt" in r.split()]
    pip_runs = [i for i, (w, r) in enumerate(steps) if w == "RUN" and "pip install" in r]
    assert copied and pip_runs and copied[0] < pip_runs[0]
    installs = [part for i in pip_runs for part in steps[i][1].split("pip install")[1:]]
    assert any("-r requirements.txt" in p for p in installs)
    for part in installs:  # every install is pinned by requirements.txt, none fills a pip cache
        assert "requirements.txt" in part and "--no-cache-dir" in part, part


def stage_image_tree(dest: Path) -> Path:
    """Copy what the Dockerfile COPYs (its destinations mirror the sources) into ``dest``."""
    for src in copy_sources():
        target = dest / src
        if (REPO / src).is_dir():
            shutil.copytree(REPO / src, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / src, target)
    return dest


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_predict_sh_runs_with_overridden_folders(tmp_path):
    workspace = stage_image_tree(tmp_path / "workspace")
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    for i, (name, size) in enumerate(INPUT_SIZES.items()):
        image, _ = make_sample(("fl", "bf")[i % 2], size, seed=i, size_range=(8, 24))
        write_image(inputs / name, image)
    torch.manual_seed(0)
    model = AWF()
    save_checkpoint_atomic({"kind": "awf", "model": model.state_dict(),
                            "model_config": model.config_dict()}, tmp_path / "random.pt")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DEVICE")}
    env.update(INPUT_DIR=str(inputs), OUTPUT_DIR=str(outputs), CKPT=str(tmp_path / "random.pt"),
               PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(["sh", "predict.sh", "--save-overlay"], cwd=workspace, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    for name, size in INPUT_SIZES.items():
        label_path = outputs / (Path(name).stem + "_label.tiff")
        assert read_label(label_path).shape == size
        assert label_path.stat().st_mode & 0o777 == FILE_MODE  # readable outside the container
        assert (outputs / (Path(name).stem + "_overlay.png")).is_file()  # extra args forwarded


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_predict_sh_without_weights_fails_in_one_line(tmp_path):
    workspace = stage_image_tree(tmp_path / "workspace")
    for weights in (workspace / "ckpts").glob("*.pt"):  # an image built without weights
        weights.unlink()
    image, _ = make_sample("fl", (64, 64), seed=0, size_range=(8, 20))
    for name in ("a.png", "b.png"):
        write_image(tmp_path / "in" / name, image)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CKPT", "DEVICE")}
    env.update(INPUT_DIR=str(tmp_path / "in"), OUTPUT_DIR=str(tmp_path / "out"),
               PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(["sh", "predict.sh"], cwd=workspace, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    errors = [ln for ln in proc.stderr.splitlines() if "ERROR" in ln]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(errors) == 1 and "general.pt" in errors[0], proc.stderr
