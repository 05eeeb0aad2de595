#!/usr/bin/env bash
# Runs every test: sets up what is missing, starts the services the tests use, then ruff and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh
.venv/bin/ruff check .
# three workers of one thread each (the broker tests mostly wait on their processes), and the tests that
# share the machine's broker databases all on one of them
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n 3 --dist loadgroup "$@"
