#!/bin/sh
# A Python 3.11 base image made from Debian packages, for machines that cannot pull
# python:3.11-slim from a registry (no network to Docker Hub, or none at all but a Debian mirror).
#
#   sudo sh docker/make_base_image.sh                     # -> image allcell-base:bookworm
#   sudo sh docker/make_base_image.sh my-base:tag http://deb.debian.org/debian
#   docker build --build-arg BASE=allcell-base:bookworm -t allcell:latest .
#
# Needs root, debootstrap and a Docker engine. The image has what the Dockerfile expects of
# python:3.11-slim: `python` and `pip` on the PATH (Debian's python3.11 and pip, system-wide
# installs allowed) and /bin/bash. About 2 minutes and ~200 MB.
set -eu
TAG="${1:-allcell-base:bookworm}"
MIRROR="${2:-http://deb.debian.org/debian}"
SUITE="${SUITE:-bookworm}"
command -v debootstrap >/dev/null || { echo "make_base_image.sh: needs debootstrap (apt-get install debootstrap)" >&2; exit 2; }
command -v docker >/dev/null || { echo "make_base_image.sh: needs docker" >&2; exit 2; }
ROOTFS="$(mktemp -d)"
trap 'rm -rf "$ROOTFS"' EXIT
debootstrap --variant=minbase \
    --include=python3,python3-pip,python-is-python3,ca-certificates,libgomp1 \
    "$SUITE" "$ROOTFS" "$MIRROR"
# pip installs into the system interpreter, as in python:3.11-slim (PEP 668 marker removed)
rm -f "$ROOTFS"/usr/lib/python3*/EXTERNALLY-MANAGED
ln -sf pip3 "$ROOTFS/usr/bin/pip"
# keep the image small: package caches, docs and locales are not needed at run time
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/*
tar -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python"]' - "$TAG"
echo "base image: $TAG"
