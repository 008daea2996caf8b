# All-Cell Segmenter in the NeurIPS 2022 Cell Segmentation challenge's Docker format:
#
#   docker build -t allcell:latest .
#   docker run --gpus=all -v $PWD/inputs/:/workspace/inputs/ -v $PWD/outputs/:/workspace/outputs/ \
#       allcell:latest /bin/bash -c "sh predict.sh"
#
# Runs on the GPU when one is visible, else on the CPU. Few layers on purpose: Docker's vfs storage
# driver (no overlayfs) copies the whole image for each one. The weights are the files in ckpts/ (see
# ckpts/README.md and data/routing.yaml).
# Build arguments:
#   BASE         the base image: any Debian/Ubuntu image with python 3.10+, pip and bash. Where
#                no registry can be reached, make one from Debian packages:
#                sh docker/make_base_image.sh, then --build-arg BASE=allcell-base:bookworm
#   TORCH_INDEX  a PyTorch wheel index for torch/torchvision. The default torch wheel from PyPI
#                carries CUDA (about 6 GB of packages); a CPU-only image (docs/DOCKER.md):
#                --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu
#   PIP_ARGS     extra pip arguments, e.g. wheels fetched beforehand and served to the build
#                without network access (docker/build_offline.sh does this):
#                --build-arg PIP_ARGS="--no-index --find-links http://127.0.0.1:8765/"
ARG BASE=python:3.11-slim

# The prediction code, its routing table and the weights (nothing for training or tests),
# gathered in a small stage so that the final image gets them in one layer.
FROM ${BASE} AS code
COPY models/ /stage/models/
COPY utils/ /stage/utils/
COPY data/routing.yaml /stage/data/routing.yaml
COPY predict.py predict.sh /stage/
COPY ckpts/ /stage/ckpts/

FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /workspace
CMD ["sh", "predict.sh"]

# Dependencies first: this layer is rebuilt only when requirements.txt changes.
ARG TORCH_INDEX=""
ARG PIP_ARGS=""
COPY requirements.txt ./
RUN if [ -n "$TORCH_INDEX" ]; then \
        pip install --no-cache-dir $PIP_ARGS -c requirements.txt torch torchvision --index-url "$TORCH_INDEX"; \
    fi \
    && pip install --no-cache-dir $PIP_ARGS -r requirements.txt

COPY --from=code /stage/ ./
