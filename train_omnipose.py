"""Train the PyTorch Omnipose branch (flows, distance, boundary) on the shared engine.

    python train_omnipose.py --img 256 --batch 8 --epochs 100 --data data/real.yaml \
        --hyp data/hyps/hyp.omnipose.yaml --weights runs/train/fulltrain/weights/best.pt --device cpu
    torchrun --nproc_per_node 2 train_omnipose.py --img 640 --batch 32 --epochs 100 \
        --data data/omnipose.yaml --workers 8 --cos-lr --name omnipose --weights baseline.pt
"""
from utils.cli import train_cli
from utils.tasks import OmniposeTask

if __name__ == "__main__":
    train_cli(OmniposeTask, __doc__.splitlines()[0],
              data="data/omnipose.yaml", hyp="data/hyps/hyp.omnipose.yaml", epochs=100,
              name="omnipose")
