#!/usr/bin/env bash
# Starts OBoW Lab on its embedded default. Until the lab server lands, this runs the tiny
# Fashion-MNIST pretraining preset so a new user sees the library train.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/obow pretrain --config FashionMNIST/tiny --dst-dir experiments "$@"
