"""Train the Anchor-based Watershed Framework (baseline and multiscale stages).

    python train_main.py --img 512 --batch 8 --epochs 100 --data data/dsb2018.yaml \
        --weights resnet18.pt --hyp data/hyps/hyp.labeled.yaml --device cpu --cos-lr
    torchrun --nproc_per_node 2 train_main.py ... --device 0,1 --sync-bn
"""
from utils.cli import options_from_args, setup_logging, training_parser
from utils.engine import run_training
from utils.tasks import AWFTask


def main(argv=None):
    args = training_parser(__doc__.splitlines()[0], data="data/cellseg/labeled.yaml",
                           hyp="data/hyps/hyp.labeled.yaml", epochs=300, name="fulltrain").parse_args(argv)
    setup_logging()
    best = run_training(AWFTask, options_from_args(args))
    print(f"done: {best}")


if __name__ == "__main__":
    main()
