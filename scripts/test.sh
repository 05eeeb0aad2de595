#!/usr/bin/env bash
# Runs every test: sets up what is missing, starts the services the tests use, then ruff and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh
.venv/bin/ruff check .
# two workers of one thread each; the live-worker test modules all on one of them (tests/conftest.py)
# (three workers were no faster on 2 cores and made the live tests' time limits flaky)
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup "$@"
