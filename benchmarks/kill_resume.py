"""kill -9 at random moments of a training run and of a ``predict.py --pseudo`` run, then resume.

    python -m benchmarks.kill_resume --trials 5 --epochs 3 --images 20 --seed 0

Training (tiny synthetic data, CPU): a straight run first, then per trial a run killed with
SIGKILL at a uniformly random moment of the straight run's duration, resumed with ``--resume
last.pt`` (or started again with ``--exist-ok`` when no epoch was saved); ``--save-kills N`` adds N
runs killed in the middle of a checkpoint write. Checked: the resumed run
completes, results.csv lists each epoch once, no temporary file remains, and the final weights
equal the straight run's bit for bit.

Pseudo labels: per trial a ``--pseudo`` run on ``--images`` synthetic images, killed at a random
moment of its image loop (after a random number of finished images, part-way into the next), then
rerun with ``--skip-existing``. By default the runs are forked children running predict.py's loop
(``utils.predict_folder.predict_files``) with the model loaded once, as a niced
``python predict.py`` can take minutes to start on a loaded machine; ``--pseudo-cli`` kills real predict.py processes
(at a random moment after their first record). Checked: the rerun completes, confidence.csv
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


def _start(args) -> subprocess.Popen:
    return subprocess.Popen(_cmd(args), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _kill_after(proc: subprocess.Popen, delay: float) -> bool:
    """SIGKILL ``proc`` ``delay`` s from now; False if it had finished before."""
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def _kill_at(args, delay: float) -> bool:
    """Start ``args``, SIGKILL it after ``delay`` s; False if it had finished before."""
    return _kill_after(_start(args), delay)


def _kill_when_saving(args, weights: Path, timeout: float = 900.0) -> bool:
    """Start ``args``, SIGKILL it as soon as a checkpoint's temporary file appears in ``weights``
    (mid torch.save); False if it finished first."""
    proc = _start(args)
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if weights.is_dir() and any(p.suffix == ".pt" and ".tmp" in p.name for p in weights.iterdir()):
            return _kill_after(proc, 0)
        time.sleep(0.005)
    _kill_after(proc, 0)
    return False


def _kill_in_loop(args, records: Path, delay: float, timeout: float = 1800.0) -> bool:
    """Start ``args``; once ``records`` holds its first row (the image loop has begun), SIGKILL
    it ``delay`` s later; False if it finished first."""
    proc = _start(args)
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline and len(_csv_rows(records)) < 1:
        time.sleep(0.02)
    return _kill_after(proc, delay)


def _forked_predict(images: Path, out: Path, router, skip_existing: bool):
    """A child process (fork: the imports and the loaded model are inherited, which saves the
    minutes a niced ``python predict.py`` takes to start on a loaded machine) running
    predict.py's loop, :func:`utils.predict_folder.predict_files`, as ``predict.py --pseudo``
    does."""
    import multiprocessing

    from utils import predict_folder
    from utils.io import list_images

    def child():
        predict_folder._STARTED = time.time()  # a new process: older temporaries are a killed run's
        predict_folder.predict_files(list_images(images), router, out, progress=False, pseudo=True,
                                     records_csv=out / "confidence.csv",
                                     skip_existing=skip_existing)

    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    return proc


def pseudo_fork_trials(work: Path, images: Path, ckpt: Path, trials: int, rng: random.Random) -> list[str]:
    """:func:`pseudo_trials` with forked children instead of predict.py processes."""
    from utils.routing import Router, load_routing
    torch.set_num_threads(1)
    router = Router(load_routing(None), torch.device("cpu"), ckpt=str(ckpt))
    router.check_checkpoints()  # loaded once, here
    n_images = len(list(images.iterdir()))
    t0 = time.time()
    proc = _forked_predict(images, work / "pseudo_straight", router, False)
    proc.join()
    loop_s = time.time() - t0
    print(f"pseudo (forked predict_files): straight run over {n_images} images {loop_s:.1f} s")
    problems = []
    for k in range(trials):
        out = work / f"pseudo{k}"
        # a random moment of the loop: after a random number of finished images, part-way into
        # the next (the straight run's timing alone is no guide on a machine whose load varies)
        after, delay = rng.randrange(n_images), rng.uniform(0.0, 1.0) * loop_s / n_images
        proc = _forked_predict(images, out, router, False)
        while proc.is_alive() and len(_csv_rows(out / "confidence.csv")) < after:
            time.sleep(0.005)
        proc.join(timeout=delay)
        killed = proc.is_alive()
        if killed:
            os.kill(proc.pid, signal.SIGKILL)
            proc.join()
        before = {r["name"]: r for r in _csv_rows(out / "confidence.csv")}
        debris = len(_temporaries(out))
        rerun = _forked_predict(images, out, router, True)
        rerun.join()
        problems += _check_pseudo(k, out, n_images, before, debris, f"{delay:.2f} s after record {after}",
                                  killed, rerun.exitcode)
    return problems


def _check_pseudo(k, out, n_images, before, debris, when: str, killed, exitcode) -> list[str]:
    after = _csv_rows(out / "confidence.csv")
    names = [r["name"] for r in after]
    kept = all(any(r == b for r in after) for b in before.values())
    labels = all(Path(r["label_path"]).is_file() for r in after)
    left = _temporaries(out)
    ok = (exitcode == 0 and len(names) == n_images == len(set(names))
          and all(r["status"] == "ok" for r in after) and kept and labels and not left)
    print(f"  trial {k}: kill {when}{'' if killed else ' (had finished)'}, "
          f"{len(before)} record(s) finished, {debris} temporary file(s) left; rerun (exit {exitcode}): "
          f"{len(names)} records, {len(set(names))} unique, finished ones kept: {kept}, "
          f"{len(left)} temporary file(s) -> {'ok' if ok else 'FAIL'}")
    return [] if ok else [f"pseudo trial {k}"]


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


def training_trials(work: Path, data: Path, trials: int, epochs: int, rng: random.Random,
                    save_kills: int = 0) -> list[str]:
    project = work / "train"
    straight_s = _run(["train_main.py", "--data", data, *TRAIN, "--epochs", epochs,
                       "--project", project, "--name", "straight"])
    ref = _weights(project / "straight" / "weights" / "last.pt")
    problems = []
    print(f"training: straight {epochs}-epoch run {straight_s:.1f} s")
    for k in range(trials + save_kills):
        name = f"killed{k}"
        delay = rng.uniform(0.2, 1.0) * straight_s
        args = ["train_main.py", "--data", data, *TRAIN, "--epochs", epochs, "--project", project,
                "--name", name, "--exist-ok"]
        run = project / name
        if k < trials:
            killed = _kill_at(args, delay)
        else:  # the worst moment: in the middle of writing a checkpoint
            killed, delay = _kill_when_saving(args, run / "weights"), float("nan")
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
    loop_s = sum(float(r["seconds"]) for r in _csv_rows(work / "pseudo_straight" / "confidence.csv"))
    print(f"pseudo: straight run over {n_images} images {t_straight:.1f} s ({loop_s:.1f} s of images)")
    problems = []
    for k in range(trials):
        out = work / f"pseudo{k}"
        args = ["predict.py", "-i", images, "-o", out, "--ckpt", ckpt, "--device", "cpu", "--pseudo"]
        delay = rng.uniform(0.0, 1.0) * loop_s  # a random moment of the image loop
        killed = _kill_in_loop(args, out / "confidence.csv", delay)
        before = {r["name"]: r for r in _csv_rows(out / "confidence.csv")}
        debris = len(_temporaries(out)) if out.exists() else 0
        proc = subprocess.run(_cmd([*args, "--skip-existing"]), cwd=REPO, env=_env(), capture_output=True)
        problems += _check_pseudo(k, out, n_images, before, debris, f"{delay:.1f} s after the first record",
                                  killed, proc.returncode)
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--save-kills", type=int, default=0,
                   help="extra training trials killed in the middle of a checkpoint write")
    p.add_argument("--no-pseudo", action="store_true", help="training trials only")
    p.add_argument("--ckpt", default=None, help="pseudo trials only, with this checkpoint")
    p.add_argument("--pseudo-cli", action="store_true",
                   help="kill python predict.py processes (default: forked predict_files children)")
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
        problems = [] if args.ckpt else training_trials(work, data, args.trials, args.epochs, rng,
                                                        args.save_kills)
        if args.no_pseudo:
            print("all invariants hold" if not problems else f"FAILED: {', '.join(problems)}")
            return 1 if problems else 0
        write_dataset(work / "unlabeled", args.images, size=(96, 96), seed=1, size_range=(10, 30))
        ckpt = Path(args.ckpt or work / "train" / "straight" / "weights" / "last.pt")
        trials = pseudo_trials if args.pseudo_cli else pseudo_fork_trials
        problems += trials(work, work / "unlabeled" / "images", ckpt, args.trials, rng)
    print("all invariants hold" if not problems else f"FAILED: {', '.join(problems)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
