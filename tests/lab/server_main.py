"""A lab API server for the tests that kill and restart it: the production `obow lab serve`, plus the
test-only kinds. Settings come from the environment (DATABASE_URL, OBOW_LAB_HOME, ARTIFACT_ROOT,
OBOW_LAB_SECRET_KEY, CELERY_BROKER_URL); the port from argv[1], else OBOW_LAB_PORT."""

import sys

from tests.lab import fake_kinds

if __name__ == "__main__":
    fake_kinds.register()
    from server.cli import lab

    lab(["serve", *(["--port", sys.argv[1]] if len(sys.argv) > 1 else [])], prog_name="obow lab")
