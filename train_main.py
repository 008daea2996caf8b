"""Train the Anchor-based Watershed Framework (baseline and multiscale stages).

    python train_main.py --img 512 --batch 8 --epochs 100 --data data/dsb2018.yaml \
        --weights resnet18.pt --hyp data/hyps/hyp.labeled.yaml --device cpu --cos-lr
    torchrun --nproc_per_node 2 train_main.py ... --device 0,1 --sync-bn
"""
from utils.cli import train_cli
from utils.tasks import AWFTask

if __name__ == "__main__":
    train_cli(AWFTask, __doc__.splitlines()[0],
              data="data/cellseg/labeled.yaml", hyp="data/hyps/hyp.labeled.yaml", epochs=300,
              name="fulltrain")
