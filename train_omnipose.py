"""Train the PyTorch Omnipose branch (flows, distance, boundary) on the shared engine.

    python train_omnipose.py --img 256 --batch 8 --epochs 100 --data data/real.yaml \
        --hyp data/hyps/hyp.omnipose.yaml --weights runs/train/fulltrain/weights/best.pt --device cpu
    torchrun --nproc_per_node 2 train_omnipose.py --img 640 --batch 32 --epochs 100 \
        --data data/omnipose.yaml --workers 8 --cos-lr --name omnipose --weights baseline.pt
"""
from utils.cli import options_from_args, setup_logging, training_parser
from utils.engine import run_training
from utils.tasks import OmniposeTask


def main(argv=None):
    args = training_parser(__doc__.splitlines()[0], data="data/omnipose.yaml",
                           hyp="data/hyps/hyp.omnipose.yaml", epochs=100, name="omnipose").parse_args(argv)
    setup_logging()
    best = run_training(OmniposeTask, options_from_args(args))
    print(f"done: {best}")


if __name__ == "__main__":
    main()
