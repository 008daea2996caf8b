"""Finetune the shipped weights on a few labelled images of your own: "my images look different".

    python finetune.py -i MY/images -l MY/labels               # 1 to 10 images, 10-15 min on a CPU
    python finetune.py -i MY/images --chan 2 --chan2 3         # membrane/cytoplasm + nuclei
    python predict.py -i MY/new_images -o out --ckpt runs/finetune/exp/finetuned.pt

Labels: labels/NAME_label.tiff (challenge layout), or Cellpose's NAME_masks.tif / NAME_masks.png /
NAME_seg.npy (in the labels folder or beside the images). With 3 images or more, one in five (at
least one) is held back and the F1 before and after is measured on it; then training goes on from
those weights on every image for the rest of the minutes (--epochs N: N again; --no-refit: one
training, held-back images never trained on; --no-val: none held back, one training on every
image). With fewer, the F1 is measured on the training images (optimistic). The detection
thresholds are swept for the final weights on every image they trained on when those hold 50
cells or more, else (and with --no-refit) for the scored weights on the held-back images; the
best pair is stored when it gains enough (--no-tune: data/routing.yaml's).
Writes runs/finetune/NAME/finetuned.pt (fp16, for predict.py --ckpt and Predictor.from_config) and
finetune.yaml (the figures); the training runs are in runs/finetune/NAME/train*/.
"""
import argparse
import sys

from utils.cli import HelpFormatter, add_common_args, setup
from utils.errors import exit_on_error
from utils.finetune import FinetuneOptions, run_finetune
from utils.precision import MODES


def parse_args(argv=None) -> argparse.Namespace:
    d = FinetuneOptions(images="")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    p.add_argument("-i", "--images", required=True, help="folder of your labelled images")
    p.add_argument("-l", "--labels", default=None,
                   help="folder of their labels (default: each label looked for in the images' "
                        "../labels if it exists, then beside the images)")
    p.add_argument("--weights", default=d.weights,
                   help="checkpoint to start from; auto: the shipped branch of the images' "
                        "modality")
    p.add_argument("--chan", type=int, default=None,
                   help="channel of the cytoplasm/membrane (or nuclei alone): 1=red 2=green "
                        "3=blue 4=fourth, 0=grey (default: the image as it is)")
    p.add_argument("--chan2", type=int, default=d.chan2,
                   help="nuclear channel with --chan (0 = none)")
    p.add_argument("--minutes", type=float, default=d.minutes,
                   help="time budget in minutes, scoring included (default: 15 where a CPU "
                        "trains in fp32, i.e. has no native bf16; else 10)")
    p.add_argument("--epochs", type=int, default=d.epochs,
                   help="a fixed number of epochs of 8 batches instead of --minutes (0: from "
                        "--minutes)")
    p.add_argument("--val", nargs="*", default=None,
                   help="image names (stems) to hold back for validation (none given: chosen)")
    p.add_argument("--no-val", dest="hold_back", action="store_false",
                   help="hold no image back: one training on every image for all the minutes; "
                        "the F1 is then measured on the training images (optimistic)")
    p.add_argument("--no-refit", dest="refit", action="store_false",
                   help="keep the weights trained without the held-back images (one training, "
                        "all the minutes) instead of training on with every image")
    p.add_argument("--no-tune", dest="tune", action="store_false",
                   help="keep data/routing.yaml's detection thresholds instead of tuning them "
                        "(on the training images, or the held-back ones)")
    p.add_argument("--img", type=int, default=d.img, help="training crop size (pixels)")
    p.add_argument("--batch", type=int, default=d.batch, help="batch size")
    p.add_argument("--workers", type=int, default=d.workers,
                   help="dataloader workers")
    p.add_argument("--device", default=d.device,
                   help="cuda device (0) or cpu (default: the first GPU, else the CPU)")
    p.add_argument("--amp", default=d.amp, choices=MODES,
                   help="precision; auto: bf16 on a CPU with native bf16, fp16 on CUDA")
    p.add_argument("--name", default=d.name, help="run folder runs/finetune/NAME (NAME2, ...)")
    p.add_argument("--project", default=d.project, help="folder of the runs")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed")
    add_common_args(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup(quiet=args.quiet)
    opt = FinetuneOptions(**{k: v for k, v in vars(args).items() if k != "quiet"})
    r = exit_on_error(run_finetune, opt)
    where = "held-back image(s)" if r.held_out else "training image(s), optimistic"
    refit = f"; then {r.refit_epochs} epochs on all the images" if r.refit else ""
    print(f"F1 before {r.before:.3f} -> after {r.after:.3f} on {len(r.scored_on)} {where}: "
          f"{', '.join(r.scored_on)}{refit}")
    t = r.tuning
    if t is not None:
        verdict = (f"stored conf {t.settings['conf_thres']:g} iou {t.settings['iou_thres']:g}"
                   if t.settings else "kept data/routing.yaml's")
        where = ("of the final weights on the training" if t.trained
                 else "of the scored weights on the held-back")
        print(f"detection thresholds {where} image(s), {t.cells} cells: F1 {t.default_f1:.3f} "
              f"with the routing's, {t.best_f1:.3f} at the best of the grid (chosen on them); "
              f"{verdict}")
    chans = "" if opt.chan is None else f" --chan {opt.chan} --chan2 {opt.chan2}"
    epochs = f"{r.epochs} + {r.refit_epochs}" if r.refit else f"{r.epochs}"
    print(f"{epochs} epochs in {r.minutes:.1f} min; weights: {r.weights}\n"
          f"predict with: python predict.py -i IMAGES -o OUTPUT --ckpt {r.weights}{chans}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
