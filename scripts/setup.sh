#!/usr/bin/env bash
# Installs what the lab and its tests need on a fresh machine; safe to run again (it skips what is there).
# PyTorch comes from the wheels on this machine's disk (see DEVELOPERS.md); Fashion-MNIST from Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
    .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
fi
stamp=.venv/.obow-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/pip install -q -e '.[test]'
    # 20 labelled ImageNet/CIFAR sample photos for smoke tests of the RGB 224-px pipeline
    .venv/bin/pip install -q --no-deps foolbox==3.3.4
    touch "$stamp"
fi

apt_install() {
    if [ "$(id -u)" = 0 ]; then
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1; then
            apt-get update -qq >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
        fi
    else
        echo "setup: need root (or sudo) to install Debian packages: $*" >&2
        return 1
    fi
}

# Fashion-MNIST (official IDX files) for the built-in presets, demos and tests.
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    apt_install dataset-fashion-mnist
fi
if [ -f scripts/setup-extra.sh ]; then
    bash scripts/setup-extra.sh
fi
