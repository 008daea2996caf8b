#!/bin/sh
# Build the challenge image where the build cannot reach a registry or PyPI: the base image from
# Debian packages (docker/make_base_image.sh, made once) and the Python wheels from a folder
# filled beforehand on the host, served to the build on 127.0.0.1 (nothing is copied into a layer).
#
#   pip download -d wheels/cpu --only-binary=:all: -r requirements.txt torch torchvision \
#       --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple
#   sh docker/build_offline.sh allcell:cpu wheels/cpu
#
# Environment: BASE (default allcell-base:bookworm, made when absent), PORT (default 8765).
# Extra arguments go to `docker build` unchanged.
set -eu
[ $# -ge 2 ] || { echo "usage: sh docker/build_offline.sh TAG WHEEL_DIR [docker build args]" >&2; exit 2; }
TAG="$1"; WHEELS="$2"; shift 2
BASE="${BASE:-allcell-base:bookworm}"
PORT="${PORT:-8765}"
cd "$(dirname "$0")/.."
ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "build_offline.sh: no wheels in $WHEELS" >&2; exit 2; }
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    sh docker/make_base_image.sh "$BASE"
fi
python3 -m http.server "$PORT" --bind 127.0.0.1 --directory "$WHEELS" >/dev/null 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true' EXIT
sleep 1
DOCKER_BUILDKIT=0 docker build --network host --build-arg BASE="$BASE" \
    --build-arg PIP_ARGS="--no-index --find-links http://127.0.0.1:$PORT/" -t "$TAG" "$@" .
