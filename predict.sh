#!/bin/sh
# Challenge entry point: segment every image of INPUT_DIR into OUTPUT_DIR/NAME_label.tiff.
#
#   sh predict.sh                                        # /workspace/inputs -> /workspace/outputs
#   INPUT_DIR=in OUTPUT_DIR=out CKPT=best.pt sh predict.sh --tta
#
# Environment: INPUT_DIR, OUTPUT_DIR (folders); CKPT (one checkpoint for every image; unset =
# per-modality routing of data/routing.yaml over ckpts/); DEVICE (e.g. 0 or cpu; unset = the
# first GPU if any, else the CPU); PYTHON (interpreter, default python). Extra arguments go to
# predict.py unchanged.
set -e
cd "$(dirname "$0")"
INPUT_DIR="${INPUT_DIR:-/workspace/inputs}"
OUTPUT_DIR="${OUTPUT_DIR:-/workspace/outputs}"
if [ -n "${DEVICE:-}" ]; then set -- --device "$DEVICE" "$@"; fi
if [ -n "${CKPT:-}" ]; then set -- --ckpt "$CKPT" "$@"; fi
exec "${PYTHON:-python}" predict.py -i "$INPUT_DIR" -o "$OUTPUT_DIR" "$@"
