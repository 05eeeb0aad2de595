#!/usr/bin/env bash
# Starts OBoW Lab on its embedded default: SQLite database, SQLite broker, one local worker, the API and
# dashboard on http://127.0.0.1:8000 (OBOW_LAB_HOST/OBOW_LAB_PORT to change). Data goes to ./lab-data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/obow lab up "$@"
