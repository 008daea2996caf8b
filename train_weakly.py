"""Finetune one AWF branch on labelled + pseudo-labelled images of one modality (weakly stage).

    python predict.py -i NeurIPS_CellSegData/Train_Unlabeled/images \
        -o NeurIPS_CellSegData/Train_Unlabeled/labels --ckpt multiscale.pt --pseudo
    python train_weakly.py --img 512 --batch 8 --epochs 100 --data data/cellseg/weakly_bf.yaml \
        --weights multiscale.pt --hyp data/hyps/hyp.ws_general.yaml --name general --cos-lr
    torchrun --nproc_per_node 2 train_weakly.py ... --device 0,1 --sync-bn

The dataset YAML names the labelled ``train`` folders, the ``pseudo`` labels and the branch's
``modality`` (bf, fl or gs); the hyp's ``pseudo_conf`` drops pseudo labels under that confidence.
"""
from utils.cli import options_from_args, setup_logging, training_parser
from utils.engine import run_training
from utils.tasks import WeaklyTask


def main(argv=None):
    args = training_parser(__doc__.splitlines()[0], data="data/cellseg/weakly_bf.yaml",
                           hyp="data/hyps/hyp.ws_general.yaml", weights="multiscale.pt",
                           epochs=100, name="weakly").parse_args(argv)
    setup_logging()
    best = run_training(WeaklyTask, options_from_args(args))
    print(f"done: {best}")


if __name__ == "__main__":
    main()
