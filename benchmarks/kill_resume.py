"""kill -9 at random moments of a training run and of a ``predict.py --pseudo`` run, then resume.

    python -m benchmarks.kill_resume --trials 5 --epochs 3 --images 20 --seed 0

Training (tiny synthetic data, CPU): a straight run first, then per trial a run killed with
SIGKILL at a uniformly random moment of the straight run's duration, resumed with ``--resume
last.pt`` (or started again with ``--exist-ok`` when no epoch was saved). Checked: the resumed run
completes, results.csv lists each epoch once, no temporary file remains, and the final weights
equal the straight run's bit for bit.

Pseudo labels: per trial ``predict.py --pseudo`` on ``--images`` synthetic images, killed at a
random moment, then rerun with ``--skip-existing``. Checked: the rerun completes, confidence.csv
lists every image once (ok), every record the killed run had finished is kept unchanged (its image
not segmented again), each listed label exists, and no temporary file remains.
Exit status 1 if any check fails.
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["--hyp", "data/hyps/hyp.labeled.yaml", "--img", "64", "--batch", "2", "--workers", "0",
         "--device", "cpu", "--seed", "3"]


def _cmd(args):
    return ["nice", "-n", "19", sys.executable, *map(str, args)]


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _run(args) -> float:
    t0 = time.time()
    proc = subprocess.run(_cmd(args), cwd=REPO, env=_env(), capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{args[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return time.time() - t0


def _kill_at(args, delay: float) -> bool:
    """Start ``args``, SIGKILL it after ``delay`` s; False if it had finished before."""
    proc = subprocess.Popen(_cmd(args), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if ".tmp" in p.name]


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _csv_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    text = path.read_text()
    text = text[:text.rfind("\n") + 1]  # a row cut by the kill is not a finished record
    return list(csv.DictReader(text.splitlines()))


def training_trials(work: Path, data: Path, trials: int, epochs: int, rng: random.Random) -> list[str]:
    project = work / "train"
    straight_s = _run(["train_main.py", "--data", data, *TRAIN, "--epochs", epochs,
                       "--project", project, "--name", "straight"])
    ref = _weights(project / "straight" / "weights" / "last.pt")
    problems = []
    print(f"training: straight {epochs}-epoch run {straight_s:.1f} s")
    for k in range(trials):
        name = f"killed{k}"
        delay = rng.uniform(0.2, 1.0) * straight_s
        args = ["train_main.py", "--data", data, *TRAIN, "--epochs", epochs, "--project", project,
                "--name", name, "--exist-ok"]
        killed = _kill_at(args, delay)
        run = project / name
        last = run / "weights" / "last.pt"
        saved = _weights(last)["epoch"] if last.is_file() else None
        debris = len(_temporaries(run))
        if not killed:
            how = "finished before the kill"
        elif saved is None:
            _run(args)
            how = "rerun (no epoch saved)"
        elif saved + 1 >= epochs:
            how = "killed after the last save"
        else:
            _run(["train_main.py", "--resume", last])
            how = f"resumed after epoch {saved + 1}"
        epochs_logged = [int(r["epoch"]) for r in _csv_rows(run / "results.csv")]
        final = _weights(last)
        same = all(torch.equal(ref[key][n], final[key][n]) for key in ("model", "ema") for n in ref[key])
        left = _temporaries(run)
        ok = final["epoch"] == epochs - 1 and epochs_logged == list(range(epochs)) and same and not left
        print(f"  trial {k}: kill at {delay:5.1f} s, {debris} temporary file(s) left by the kill, {how}; "
              f"results.csv epochs {epochs_logged}, weights {'bit-exact' if same else 'DIFFER'}, "
              f"{len(left)} temporary file(s) after -> {'ok' if ok else 'FAIL'}")
        if not ok:
            problems.append(f"training trial {k}")
    return problems


def pseudo_trials(work: Path, images: Path, ckpt: Path, trials: int, rng: random.Random) -> list[str]:
    n_images = len(list(images.iterdir()))
    t_straight = _run(["predict.py", "-i", images, "-o", work / "pseudo_straight", "--ckpt", ckpt,
                       "--device", "cpu", "--pseudo"])
    print(f"pseudo: straight run over {n_images} images {t_straight:.1f} s")
    problems = []
    for k in range(trials):
        out = work / f"pseudo{k}"
        args = ["predict.py", "-i", images, "-o", out, "--ckpt", ckpt, "--device", "cpu", "--pseudo"]
        delay = rng.uniform(0.3, 1.0) * t_straight
        killed = _kill_at(args, delay)
        before = {r["name"]: r for r in _csv_rows(out / "confidence.csv")}
        debris = len(_temporaries(out)) if out.exists() else 0
        _run([*args, "--skip-existing"])
        after = _csv_rows(out / "confidence.csv")
        names = [r["name"] for r in after]
        kept = all(any(r == b for r in after) for b in before.values())
        labels = all(Path(r["label_path"]).is_file() for r in after)
        left = _temporaries(out)
        ok = (len(names) == n_images == len(set(names)) and all(r["status"] == "ok" for r in after)
              and kept and labels and not left)
        print(f"  trial {k}: kill at {delay:5.1f} s{'' if killed else ' (had finished)'}, "
              f"{len(before)} record(s) finished, {debris} temporary file(s) left; rerun: "
              f"{len(names)} records, {len(set(names))} unique, finished ones kept: {kept}, "
              f"{len(left)} temporary file(s) -> {'ok' if ok else 'FAIL'}")
        if not ok:
            problems.append(f"pseudo trial {k}")
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--images", type=int, default=20, help="images of the --pseudo run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    args = p.parse_args(argv)
    from utils.synthetic import write_dataset
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        write_dataset(work / "set", 8, size=(96, 96), seed=0, size_range=(10, 30))
        data = work / "data.yaml"
        data.write_text("path: set\ntrain: [.]\nval: [.]\n")
        problems = training_trials(work, data, args.trials, args.epochs, rng)
        write_dataset(work / "unlabeled", args.images, size=(96, 96), seed=1, size_range=(10, 30))
        ckpt = work / "train" / "straight" / "weights" / "last.pt"
        problems += pseudo_trials(work, work / "unlabeled" / "images", ckpt, args.trials, rng)
    print("all invariants hold" if not problems else f"FAILED: {', '.join(problems)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
