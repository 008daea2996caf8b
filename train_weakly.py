"""Finetune one AWF branch on labelled + pseudo-labelled images of one modality (weakly stage).

    python predict.py -i ../NeurIPS_CellSegData/Train_Unlabeled/images \
        -o ../NeurIPS_CellSegData/Train_Unlabeled/labels --ckpt multiscale.pt --pseudo
    python train_weakly.py --img 512 --batch 8 --epochs 100 --data data/cellseg/weakly_bf.yaml \
        --weights multiscale.pt --hyp data/hyps/hyp.ws_general.yaml --name general --cos-lr
    torchrun --nproc_per_node 2 train_weakly.py ... --device 0,1 --sync-bn

The dataset YAML names the labelled ``train`` folders, the ``pseudo`` labels and the branch's
``modality`` (bf, fl or gs); the hyp's ``pseudo_conf`` drops pseudo labels under that confidence.
"""
from utils.cli import train_cli
from utils.tasks import WeaklyTask

if __name__ == "__main__":
    train_cli(WeaklyTask, __doc__.splitlines()[0],
              data="data/cellseg/weakly_bf.yaml", hyp="data/hyps/hyp.ws_general.yaml",
              weights="multiscale.pt", epochs=100, name="weakly")
