# All-Cell Segmenter in the NeurIPS 2022 Cell Segmentation challenge's Docker format:
#
#   docker build -t allcell:latest .
#   docker run --gpus=all -v $PWD/inputs/:/workspace/inputs/ -v $PWD/outputs/:/workspace/outputs/ \
#       allcell:latest /bin/bash -c "sh predict.sh"
#
# Runs on the GPU when one is visible, else on the CPU. The default torch wheel from PyPI carries
# CUDA; for a much smaller CPU-only image:
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu -t allcell:cpu .
# The weights are the files in ckpts/ (see ckpts/README.md and data/routing.yaml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /workspace

# Dependencies first: this layer is rebuilt only when requirements.txt changes.
ARG TORCH_INDEX=""
COPY requirements.txt ./
RUN if [ -n "$TORCH_INDEX" ]; then \
        pip install --no-cache-dir -c requirements.txt torch torchvision --index-url "$TORCH_INDEX"; \
    fi \
    && pip install --no-cache-dir -r requirements.txt

# The prediction code, its routing table and the weights (nothing for training or tests).
COPY models/ models/
COPY utils/ utils/
COPY data/routing.yaml data/routing.yaml
COPY predict.py predict.sh ./
COPY ckpts/ ckpts/

CMD ["sh", "predict.sh"]
